"""Reptile (Nichol, Achiam & Schulman 2018, arXiv:1803.02999).

For each task, train a copy of the parameters with a few steps of SGD or Adam
on the task's examples, then move the initialisation towards the adapted
weights: ``theta <- theta + epsilon * mean_tasks(phi - theta)``. To run under the
common engine, ``meta_loss`` returns a surrogate whose gradient is
``mean_tasks(theta - phi)``; an outer SGD step with learning rate ``epsilon``
(the paper anneals it linearly from 1 to 0) is then exactly the Reptile update.

Differences from the paper's code: the inner Adam starts fresh for every task
(the original keeps its moments across tasks, hidden state this library does
not carry between calls); minibatches take the support examples shot-major, so
each holds every class.
"""

from __future__ import annotations

import math
import threading
from typing import Literal

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, register_algorithm
from fastadapt.extension import load_extension
from fastadapt.inner_loop import Params, buffer_copies, forward, loss_function, tensor_aliases
from fastadapt.task_parallel import Job, check_workers, map_interleaved, run_job
from fastadapt.tasks.spec import EpisodeBatch


@register_algorithm("reptile")
class Reptile(nn.Module):
    """Reptile around any backbone.

    Args:
        backbone: ``(N, *example_shape) -> (N, ways)``.
        inner_lr: inner step size.
        inner_steps: inner minibatch steps per task in meta-training.
        eval_inner_steps: inner steps in ``predict`` (paper: 50).
        inner_batch: examples per inner minibatch (paper: 10 for 5-way, 20 for 20-way).
        inner_optimizer: ``"adam"`` (beta1 = 0, as in the paper) or ``"sgd"``.
        loss: ``"cross_entropy"`` or ``"mse"``.
        transductive: in ``predict``, normalise all queries of a task together (batch
            statistics over the query set) instead of each query with the support set.
        task_workers: threads that run the inner steps of a meta-batch's tasks, in ``meta_loss``
            and ``predict`` (``fastadapt.task_parallel.map_interleaved``: each thread takes one
            step of any waiting task at a time, so 5 tasks keep 2 threads busy to the end).
        fused_update: the inner Adam step of CPU float32/float64 parameters as one compiled pass
            (fastadapt's C++ extension, ``csrc/fused_update.cpp``) instead of five ``torch._foreach``
            passes and a temporary of the parameters' size; the same arithmetic in the same order
            (results may differ in the last bit where the compiler fuses a multiply-add). Other
            devices and dtypes, and inner SGD (one foreach pass already), take the foreach update.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        eval_inner_steps: int = 50,
        inner_batch: int = 10,
        inner_optimizer: Literal["adam", "sgd"] = "adam",
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        transductive: bool = False,
        task_workers: int = 1,
        fused_update: bool = False,
    ) -> None:
        super().__init__()
        if inner_optimizer not in ("adam", "sgd"):
            raise ValueError(f"inner_optimizer must be 'adam' or 'sgd', got {inner_optimizer!r}")
        if inner_steps < 0 or eval_inner_steps < 0 or inner_batch < 1:
            raise ValueError(f"need steps >= 0 and inner_batch >= 1, got {inner_steps}, {eval_inner_steps}, {inner_batch}")
        self.backbone, self.inner_lr, self.inner_optimizer = backbone, inner_lr, inner_optimizer
        self.inner_steps, self.eval_inner_steps, self.inner_batch = inner_steps, eval_inner_steps, inner_batch
        self.loss, self.transductive = loss_function(loss), transductive
        check_workers(task_workers)
        self.task_workers = task_workers
        self.fused_update = fused_update and inner_optimizer == "adam"
        if self.fused_update:
            load_extension()  # built or loaded now: a missing compiler fails here, naming what is missing

    def train_task(self, support_x: Tensor, support_y: Tensor, steps: int, model: nn.Module | None = None) -> Params:
        """Parameters after ``steps`` inner minibatch steps on one task (no graph kept).

        The update is ``torch.optim``'s arithmetic on all parameters at once (``torch._foreach``
        ops, in place, as ``torch.optim.Adam(foreach=True)`` does) rather than a per-parameter
        Python loop: 1.02x instead of 0.96x the plain loop's speed in ``benchmarks/peers``.

        Args:
            support_x: ``(N, ...)`` class-major support examples; ``support_y``: ``(N,)``.
            model: the module called (default the backbone).
        """
        model = self.backbone if model is None else model
        return run_job(self._adapt(support_x, support_y, steps, tensor_aliases(model)), model)

    def _adapt(self, support_x: Tensor, support_y: Tensor, steps: int, aliases: dict[str, str]) -> Job[Params]:
        """``train_task`` as a ``fastadapt.task_parallel`` job: one inner step per ``yield``.

        The model is read only through the module each step receives (task_parallel);
        ``aliases`` is ``tensor_aliases`` of it (``inner_loop.forward``).
        """
        model = yield
        ways = int(support_y.max()) + 1 if support_y.dtype == torch.long else 1
        order = torch.arange(len(support_x)).view(ways, -1).t().flatten()  # shot-major
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        weights = list(params.values())
        moments = [torch.zeros_like(p) for p in weights]
        buffers = buffer_copies(model)
        for step in range(steps):
            if step:
                model = yield
            start = (step * self.inner_batch) % len(order)
            idx = order[start : start + self.inner_batch]
            with torch.enable_grad():
                loss = self.loss(forward(model, params, buffers, support_x[idx], aliases), support_y[idx])
                grads = list(torch.autograd.grad(loss, weights))
            with torch.no_grad():
                self._update(weights, grads, moments, step + 1)
        return {n: p.detach() for n, p in params.items()}

    def _update(self, weights: list[Tensor], grads: list[Tensor], moments: list[Tensor], t: int) -> None:
        """One in-place step of ``weights``; ``moments`` is Adam's second moment, updated too."""
        if self.inner_optimizer == "sgd":
            torch._foreach_add_(weights, grads, alpha=-self.inner_lr)
            return
        # Adam with beta1 = 0 (the paper's): v <- beta2 v + (1 - beta2) g^2, and the step is
        # lr * g / (sqrt(v) / c + eps) = lr * c * g / (sqrt(v) + eps * c), c = sqrt(1 - beta2^t)
        # (torch.optim.Adam's step; the second form saves one pass over the parameters).
        beta2, eps = 0.999, 1e-8
        if self.fused_update and _fusable(weights, grads):
            load_extension().adam_beta1_zero_step(weights, grads, moments, self.inner_lr, beta2, eps, t)
            return
        c = math.sqrt(1 - beta2**t)
        torch._foreach_mul_(moments, beta2)
        torch._foreach_addcmul_(moments, grads, grads, value=1 - beta2)
        denominator = torch._foreach_sqrt(moments)
        torch._foreach_add_(denominator, eps * c)
        torch._foreach_addcdiv_(weights, grads, denominator, value=-self.inner_lr * c)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        current = {n: p.detach() for n, p in self.backbone.named_parameters()}
        tasks, aliases = len(batch), tensor_aliases(self.backbone)

        displacement = _OrderedSum([torch.zeros_like(p) for p in current.values()])

        def job(t: int) -> Job[tuple[Tensor, Tensor]]:
            adapted = yield from self._adapt(batch.support_x[t], batch.support_y[t], self.inner_steps, aliases)
            model = yield
            with torch.no_grad():
                out = forward(model, adapted, buffer_copies(model), batch.query_x[t], aliases)
                moved = [adapted[n] for n in current]  # this task's own tensors: phi - theta in place
                torch._foreach_sub_(moved, list(current.values()))
                displacement.add(t, moved)
                return self.loss(out, batch.query_y[t]), out

        results = map_interleaved(self.backbone, tasks, self.task_workers, job)
        query_loss = torch.stack([loss for loss, _ in results]).mean()
        direction = {n: -d / tasks for n, d in zip(current, displacement.total)}  # mean(theta - phi)
        # Value: the adapted query loss (for logging). Gradient: d = mean(theta - phi), since
        # d/dtheta sum((theta - theta.detach()) * d) = d; an SGD step of size epsilon is Reptile's.
        surrogate = query_loss + sum(((p - p.detach()) * direction[n]).sum() for n, p in self.backbone.named_parameters())
        return MetaOutput(surrogate, torch.stack([out for _, out in results]))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        aliases = tensor_aliases(self.backbone)

        def job(t: int) -> Job[Tensor]:
            adapted = yield from self._adapt(support_x[t], support_y[t], self.eval_inner_steps, aliases)
            model = yield
            buffers = buffer_copies(model)
            with torch.no_grad():
                if self.transductive:
                    return forward(model, adapted, buffers, query_x[t], aliases)
                # Each query is normalised together with the support set only (support + 1).
                return torch.stack([
                    forward(model, adapted, buffers, torch.cat([support_x[t], q[None]]), aliases)[-1] for q in query_x[t]
                ])

        return torch.stack(map_interleaved(self.backbone, support_x.shape[0], self.task_workers, job))


def _fusable(weights: list[Tensor], grads: list[Tensor]) -> bool:
    """Whether ``adam_beta1_zero_step`` takes these: CPU float32/float64 gradients of the weights' dtype
    (the moments are the weights' ``zeros_like``: same device, dtype and layout)."""
    return all(
        w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64) and g.dtype == w.dtype and g.device == w.device
        for w, g in zip(weights, grads)
    )


class _OrderedSum:
    """Per-task tensor lists summed into ``total`` in task order as tasks finish, on any thread.

    A task's list is added as soon as every earlier task's has been (until then it is held),
    so the sum is the same whatever order the threads finish in, and no more than the
    out-of-order lists are alive at once (instead of one per task of the meta-batch).
    """

    def __init__(self, total: list[Tensor]) -> None:
        self.total, self._next, self._lock = total, 0, threading.Lock()
        self._held: dict[int, list[Tensor]] = {}

    def add(self, task: int, values: list[Tensor]) -> None:
        with self._lock:
            self._held[task] = values
            while self._next in self._held:
                torch._foreach_add_(self.total, self._held.pop(self._next))
                self._next += 1
