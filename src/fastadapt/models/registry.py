"""The backbone registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fastadapt.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
register_model = BACKBONES.register


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with constructor arguments ``kwargs``.

    Example:
        >>> create_model("conv4", out_features=5).__class__.__name__
        'Conv4'
    """
    return BACKBONES.get(name)(**kwargs)


def list_models() -> list[str]:
    """Registered backbone names."""
    return BACKBONES.names()
