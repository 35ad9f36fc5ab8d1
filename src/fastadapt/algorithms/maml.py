"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine 2017, arXiv:1703.03400).

Learns an initialisation from which a few gradient steps on a task's support
set give a good model for its queries. The inner loop computes adapted
parameter dicts with ``functional_call`` (``fastadapt.inner_loop``); the outer
loss is the mean query loss over the meta-batch, differentiated through the
inner steps (second order) or not (``first_order=True``: first-order MAML).
``adapt`` selects the parameters adapted in the inner loop by a regular expression.

Tasks of a meta-batch run in a Python loop, each task's meta-gradient taken as soon
as its query loss exists (default; optionally on several threads), in a loop that
keeps one graph for the meta-batch, or under ``torch.func.vmap``.
BatchNorm: functional calls get copies of the backbone's buffers, so ``meta_loss``
and ``predict`` never change the module's running statistics; the recipes use
batch statistics (``bn="batch"``), as the paper's code does.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, register_algorithm
from fastadapt.inner_loop import InnerLoop
from fastadapt.tasks.spec import EpisodeBatch


@register_algorithm("maml")
class MAML(nn.Module):
    """MAML and first-order MAML around any backbone mapping examples to outputs.

    Args:
        backbone: ``(N, *example_shape) -> (N, ways)`` logits (``(N, *target)`` for regression).
        inner_lr: inner step size on the *mean* loss (the paper's TF loss sums over the
            ways, so its 0.4 for 5-way is 2.0 here; see the Omniglot recipes).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps in ``predict`` (default: ``inner_steps``).
        first_order: drop second-order terms (FOMAML).
        adapt: regular expression of the parameter names adapted (default: all).
        loss: ``"cross_entropy"`` (classification) or ``"mse"`` (regression).
        task_batching: over the tasks of a meta-batch: ``"stream"`` (a loop that takes each
            task's meta-gradient as soon as its query loss exists, so peak memory is one task's
            graph; ``meta_loss`` then returns a surrogate loss with the mean query loss as value
            and the meta-gradient as gradient: ``fastadapt.inner_loop.streamed_meta_loss``),
            ``"loop"`` (one graph for the whole meta-batch, differentiable to any order) or
            ``"vmap"``.
        precision: ``"bfloat16"`` runs the query forward passes (and the backward through
            them) under bfloat16 autocast, the inner loop in float32
            (``fastadapt.inner_loop.query_forward``): a 1.24x faster Omniglot 5-way 1-shot step
            on an AMX-BF16 CPU (``benchmarks/precision.py``), many times slower where bfloat16
            is emulated; ``"auto"`` uses bfloat16 only where it is native
            (``fastadapt.runtime.resolve_precision``).
        task_workers: threads the tasks are split over with ``"stream"`` and in ``predict``
            (``fastadapt.task_parallel``); each gets ``torch.get_num_threads() // task_workers``
            intra-op threads.
        query_channels_last: run the query passes on channels-last (NHWC) copies of the 4-d
            parameters while the inner loop keeps the module's layout
            (``fastadapt.inner_loop.query_forward``): faster oneDNN convolutions with one intra-op
            thread per worker or in bfloat16; same results up to summation order.
        second_order_kernels: second-order support passes with compiled convolution and
            BatchNorm functions whose double backward is explicit
            (``fastadapt.double_backward``; needs a C++ compiler and ``ninja``, compiled once on
            construction): same meta-gradients up to rounding; a MAML 20-way 5-step step 1.34x,
            5-way 1-step 1.04x with the other speed settings (``benchmarks/README.md``, ablation
            table); no effect with ``first_order``.
        inner_checkpoint: rebuild the second-order inner steps one at a time in the backward
            instead of keeping all ``inner_steps`` steps' graphs (``fastadapt.inner_checkpoint``):
            a task holds what a one-step loop holds, all steps but the last run their forward and
            first backward twice (MAML 20-way 5-step: 33 -> 11 MB of saved tensors, 1.18x the step
            time; ``benchmarks/README.md``). An int ``k`` keeps the last ``k`` steps' graphs and
            rebuilds the ones before (memory and recomputation in between: with two
            ``task_workers``, ``k = inner_steps // 2`` keeps no more graphs alive than one worker
            without checkpointing). Same meta-gradients up to rounding; differentiable once where
            a step is rebuilt; no effect with ``first_order``; not with ``"vmap"``.
        query_compact_activations: the query passes keep smaller activations for their
            backward (``fastadapt.compact_activations``: a cheap first convolution's output
            recomputed instead of kept, ReLU masks instead of outputs; compiled C++ on
            construction): on the Omniglot Conv-4 (5w1s15q) a task's peak of live tensors drops
            from ~17 to ~12 MB (the tensor pool's peak, one worker); same meta-gradients up to
            rounding; ``"stream"`` only.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
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
        self.backbone, self.inner_lr = backbone, inner_lr
        self.inner = InnerLoop.for_backbone(
            backbone, loss=loss, steps=inner_steps, eval_steps=eval_inner_steps, first_order=first_order,
            adapt=adapt, batching=task_batching, precision=precision, workers=task_workers,
            query_channels_last=query_channels_last, second_order_kernels=second_order_kernels,
            checkpoint=inner_checkpoint, query_compact=query_compact_activations,
        )

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        return MetaOutput(*self.inner.meta_loss(self.backbone, batch, self.inner_lr))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.inner.predict(self.backbone, support_x, support_y, query_x, self.inner_lr)
