"""The contract every meta-learning algorithm fulfils, and the algorithm registry.

An algorithm is a small ``nn.Module`` around the user's backbone. Its
meta-parameters (the backbone's, plus learned learning rates, relation modules,
...) are ordinary parameters, so ``state_dict``, optimisers and DDP just work.
No state is carried between calls: every call receives its episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fastadapt.registry import Registry
from fastadapt.tasks.spec import EpisodeBatch


class MetaOutput(NamedTuple):
    """Result of ``meta_loss``.

    Attributes:
        loss: scalar outer loss, differentiable w.r.t. the meta-parameters.
        logits: ``(B, ways*queries, ways)`` query logits (``(B, queries, *target)``
            predictions for regression), detached or not, for metrics.
    """

    loss: Tensor
    logits: Tensor


@runtime_checkable
class MetaLearner(Protocol):
    """What the engine needs from an algorithm."""

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        """Outer loss over the meta-batch ``batch`` and its query logits."""
        ...

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Adapt on each task's support set and score its queries.

        Args:
            support_x: ``(B, ways*shots, *example_shape)``.
            support_y: ``(B, ways*shots)`` labels in ``[0, ways)``.
            query_x: ``(B, Q, *example_shape)``.

        Returns:
            ``(B, Q, ways)`` logits. Works under ``torch.no_grad()``.
        """
        ...


ALGORITHMS: Registry[Callable[..., nn.Module]] = Registry("algorithm")
register_algorithm = ALGORITHMS.register


def create_algorithm(name: str, backbone: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``backbone`` in the algorithm registered as ``name``."""
    return ALGORITHMS.get(name)(backbone, **kwargs)


def infer_ways(support_y: Tensor) -> int:
    """Number of classes of a batch of support labels ``(B, N)`` (labels are ``[0, ways)``)."""
    return int(support_y.max()) + 1


def register_temperature(module: nn.Module, temperature: float, learn: bool) -> None:
    """Give ``module`` a ``log_temperature`` scalar: a meta-parameter if ``learn``, else a buffer.

    The scale is kept as its logarithm so that it stays positive under any update;
    ``module.log_temperature.exp()`` is the factor applied to similarity scores.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_scale = torch.tensor(math.log(temperature))
    if learn:
        module.log_temperature = nn.Parameter(log_scale)
    else:
        module.register_buffer("log_temperature", log_scale)

