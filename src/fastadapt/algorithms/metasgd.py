"""Meta-SGD (Li, Zhou, Chen & Li 2017, arXiv:1707.09835).

MAML with a learned inner learning rate for every parameter entry: the inner
step is ``theta - alpha * grad`` with ``alpha`` a tensor shaped like ``theta``,
meta-learned jointly with the initialisation (``alpha`` lives in the state dict).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, register_algorithm
from fastadapt.inner_loop import InnerLoop
from fastadapt.tasks.spec import EpisodeBatch


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot contain dots


@register_algorithm("metasgd")
class MetaSGD(nn.Module):
    """Meta-SGD around any backbone.

    Args:
        backbone: ``(N, *example_shape) -> (N, ways)`` (``(N, *target)`` for regression).
        inner_lr: initial value of every learned learning rate (the paper draws them
            from U[0.005, 0.1]; a constant start is deterministic and works as well).
        inner_steps, eval_inner_steps, first_order, adapt, loss, task_batching, precision,
            task_workers, query_channels_last, second_order_kernels, inner_checkpoint,
            query_compact_activations: as in ``MAML``
            (with ``inner_checkpoint`` the learned learning rates' gradients are recomputed too).
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: str | None = None,
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        task_batching: Literal["stream", "loop", "vmap"] = "stream",
        precision: Literal["float32", "bfloat16", "auto"] = "float32",
        task_workers: int = 1,
        query_channels_last: bool = False,
        second_order_kernels: bool = False,
        inner_checkpoint: bool | int = False,
        query_compact_activations: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.inner = InnerLoop.for_backbone(
            backbone, loss=loss, steps=inner_steps, eval_steps=eval_inner_steps, first_order=first_order,
            adapt=adapt, batching=task_batching, precision=precision, workers=task_workers,
            query_channels_last=query_channels_last, second_order_kernels=second_order_kernels,
            checkpoint=inner_checkpoint, query_compact=query_compact_activations,
        )
        params = dict(backbone.named_parameters())
        self.lrs = nn.ParameterDict(
            {_key(n): nn.Parameter(torch.full_like(params[n], inner_lr)) for n in self.inner.names or []}
        )

    def learning_rates(self) -> dict[str, Tensor]:
        """The learned per-entry inner learning rates, keyed by parameter name."""
        return {n: self.lrs[_key(n)] for n in self.inner.names or []}

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        return MetaOutput(*self.inner.meta_loss(self.backbone, batch, self.learning_rates()))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.inner.predict(self.backbone, support_x, support_y, query_x, self.learning_rates())
