"""Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals 2020, arXiv:1909.09157).

MAML whose inner loop adapts only the network's head: the body is meta-learned
by the outer loop alone, which the paper shows costs no accuracy (feature
reuse) while making the inner loop cheaper. The head is selected by name.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, register_algorithm
from fastadapt.inner_loop import InnerLoop
from fastadapt.tasks.spec import EpisodeBatch


@register_algorithm("anil")
class ANIL(nn.Module):
    """ANIL around a backbone whose head parameters match ``head``.

    Args:
        backbone: ``(N, *example_shape) -> (N, ways)``.
        head: regular expression of the head's parameter names (``Conv4``'s head is ``head.``).
        inner_lr, inner_steps, eval_inner_steps, first_order, loss, task_batching, precision,
            task_workers, query_channels_last, inner_checkpoint, query_compact_activations: as in ``MAML``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: str = r"^head\.",
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        task_batching: Literal["stream", "loop", "vmap"] = "stream",
        precision: Literal["float32", "bfloat16", "auto"] = "float32",
        task_workers: int = 1,
        query_channels_last: bool = False,
        inner_checkpoint: bool | int = False,
        query_compact_activations: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.inner_lr = backbone, inner_lr
        self.inner = InnerLoop.for_backbone(
            backbone, loss=loss, steps=inner_steps, eval_steps=eval_inner_steps, first_order=first_order,
            adapt=head, batching=task_batching, precision=precision, workers=task_workers,
            query_channels_last=query_channels_last, checkpoint=inner_checkpoint,
            query_compact=query_compact_activations,
        )

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        return MetaOutput(*self.inner.meta_loss(self.backbone, batch, self.inner_lr))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.inner.predict(self.backbone, support_x, support_y, query_x, self.inner_lr)
