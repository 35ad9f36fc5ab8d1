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

from typing import Literal

import torch
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, register_algorithm
from fastadapt.inner_loop import Params, buffer_copies, forward, loss_function
from fastadapt.task_parallel import check_workers, map_shares
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
        task_workers: threads the tasks of a meta-batch are split over, in ``meta_loss`` and
            ``predict`` (``fastadapt.task_parallel``).
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

    def train_task(self, support_x: Tensor, support_y: Tensor, steps: int, model: nn.Module | None = None) -> Params:
        """Parameters after ``steps`` inner minibatch steps on one task (no graph kept).

        Args:
            support_x: ``(N, ...)`` class-major support examples; ``support_y``: ``(N,)``.
            model: the module called (default the backbone; worker threads pass a replica).
        """
        model = self.backbone if model is None else model  # read through ``model`` only (task_parallel)
        ways = int(support_y.max()) + 1 if support_y.dtype == torch.long else 1
        order = torch.arange(len(support_x)).view(ways, -1).t().flatten()  # shot-major
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        moments = {n: torch.zeros_like(p) for n, p in params.items()}
        buffers = buffer_copies(model)
        with torch.enable_grad():
            for step in range(steps):
                start = (step * self.inner_batch) % len(order)
                idx = order[start : start + self.inner_batch]
                loss = self.loss(forward(model, params, buffers, support_x[idx]), support_y[idx])
                grads = torch.autograd.grad(loss, list(params.values()))
                params = self._update(params, dict(zip(params, grads)), moments, step + 1)
        return params

    def _update(self, params: Params, grads: Params, moments: Params, t: int) -> Params:
        if self.inner_optimizer == "sgd":
            return {n: (p - self.inner_lr * grads[n]).detach().requires_grad_() for n, p in params.items()}
        beta2, eps = 0.999, 1e-8  # Adam with beta1 = 0: the step is g / sqrt(v_hat)
        new = {}
        for n, p in params.items():
            moments[n] = beta2 * moments[n] + (1 - beta2) * grads[n] ** 2
            v_hat = moments[n] / (1 - beta2**t)
            new[n] = (p - self.inner_lr * grads[n] / (v_hat.sqrt() + eps)).detach().requires_grad_()
        return new

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        current = dict(self.backbone.named_parameters())
        tasks = len(batch)

        def share_fn(model: nn.Module, share: range) -> tuple[Params, list[Tensor], list[Tensor]]:
            direction = {n: torch.zeros_like(p) for n, p in current.items()}
            losses, outputs = [], []
            for t in share:
                adapted = self.train_task(batch.support_x[t], batch.support_y[t], self.inner_steps, model)
                for n in direction:
                    direction[n] += (current[n] - adapted[n]).detach() / tasks
                with torch.no_grad():
                    out = forward(model, adapted, buffer_copies(model), batch.query_x[t])
                    losses.append(self.loss(out, batch.query_y[t]))
                outputs.append(out)
            return direction, losses, outputs

        results = map_shares(self.backbone, tasks, self.task_workers, share_fn)
        query_loss = torch.stack([v for _, losses, _ in results for v in losses]).mean()
        direction = {n: torch.stack([d[n] for d, _, _ in results]).sum(0) for n in current}
        # Value: the adapted query loss (for logging). Gradient: d = mean(theta - phi), since
        # d/dtheta sum((theta - theta.detach()) * d) = d; an SGD step of size epsilon is Reptile's.
        surrogate = query_loss + sum(((p - p.detach()) * direction[n]).sum() for n, p in current.items())
        return MetaOutput(surrogate, torch.stack([o for _, _, outs in results for o in outs]))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        def share_fn(model: nn.Module, share: range) -> list[Tensor]:
            outputs = []
            for t in share:
                adapted = self.train_task(support_x[t], support_y[t], self.eval_inner_steps, model)
                buffers = buffer_copies(model)
                with torch.no_grad():
                    if self.transductive:
                        outputs.append(forward(model, adapted, buffers, query_x[t]))
                        continue
                    # Each query is normalised together with the support set only (support + 1).
                    per_query = [forward(model, adapted, buffers, torch.cat([support_x[t], q[None]]))[-1] for q in query_x[t]]
                    outputs.append(torch.stack(per_query))
            return outputs

        results = map_shares(self.backbone, support_x.shape[0], self.task_workers, share_fn)
        return torch.stack([o for outs in results for o in outs])
