"""Named, complete experiment configs ("recipes") reproducing published tables.

``fastadapt recipes`` lists them; ``get_recipe("omniglot/protonet-5w1s")`` returns a
fresh ``Config``. Each recipe states the figure it reproduces and its source.
"""

from __future__ import annotations

from collections.abc import Callable

from fastadapt.config import Config
from fastadapt.registry import Registry

RECIPES: Registry[Callable[[], Config]] = Registry("recipe")


def register_recipe(factory: Callable[[], Config]) -> Callable[[], Config]:
    """Register a zero-argument function returning a ``Config`` under the config's name."""
    RECIPES.register(factory().name)(factory)
    return factory


def get_recipe(name: str) -> Config:
    """A fresh copy of the recipe ``name``."""
    return RECIPES.get(name)()


def list_recipes() -> list[str]:
    return RECIPES.names()


from fastadapt.recipes import omniglot as _omniglot  # noqa: E402,F401  (registers)
from fastadapt.recipes import omniglot_gradient as _omniglot_gradient  # noqa: E402,F401
from fastadapt.recipes import omniglot_metric as _omniglot_metric  # noqa: E402,F401
from fastadapt.recipes import sinusoid as _sinusoid  # noqa: E402,F401

__all__ = ["RECIPES", "get_recipe", "list_recipes", "register_recipe"]
