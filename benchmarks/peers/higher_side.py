"""higher (facebookresearch/higher, PyPI ``higher``): ``innerloop_ctx`` as its examples use it.

MAML: ``innerloop_ctx(model, SGD(lr), copy_initial_weights=False)`` per task,
``diffopt.step(support_loss)``, the query loss back-propagated per task (higher's
``maml-omniglot`` example). First order: ``track_higher_grads=False`` and the query-loss
gradient at the adapted weights added to the model's gradients. Reptile:
``track_higher_grads=False`` with higher's differentiable Adam (``betas=(0, 0.999)``).
"""

from __future__ import annotations

import importlib.metadata

import higher
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks import EpisodeBatch

NOTE = "higher.innerloop_ctx (PyPI)"


def version() -> str:
    return importlib.metadata.version("higher")


def _accumulate(model: nn.Module, grads: tuple[torch.Tensor, ...]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g.detach() if p.grad is None else p.grad + g.detach()


def maml(config: BenchConfig, model: nn.Module) -> Backward:
    lr, steps = config.algorithm_args["inner_lr"], config.algorithm_args["inner_steps"]
    first_order = config.algorithm_args.get("first_order", False)
    inner = torch.optim.SGD(model.parameters(), lr=lr)

    def backward(batch: EpisodeBatch) -> None:
        for t in range(len(batch)):
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False, track_higher_grads=not first_order) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
                query_loss = F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t]) / len(batch)
                if first_order:
                    _accumulate(model, torch.autograd.grad(query_loss, list(fmodel.parameters())))
                else:
                    query_loss.backward()

    return backward


def reptile(config: BenchConfig, model: nn.Module) -> Backward:
    args = config.algorithm_args
    inner = torch.optim.Adam(model.parameters(), lr=args["inner_lr"], betas=(0.0, 0.999))

    def backward(batch: EpisodeBatch) -> None:
        direction = [torch.zeros_like(p) for p in model.parameters()]
        order = torch.arange(batch.support_x.shape[1]).view(config.ways, -1).t().flatten()  # shot-major
        for t in range(len(batch)):
            with higher.innerloop_ctx(model, inner, track_higher_grads=False) as (fmodel, diffopt):
                for step in range(args["inner_steps"]):
                    start = (step * args["inner_batch"]) % len(order)
                    idx = order[start : start + args["inner_batch"]]
                    diffopt.step(F.cross_entropy(fmodel(batch.support_x[t][idx]), batch.support_y[t][idx]))
                for d, p, q in zip(direction, model.parameters(), fmodel.parameters()):
                    d += (p - q).detach() / len(batch)
        _accumulate(model, tuple(direction))

    return backward


BACKWARD = {"maml": maml, "reptile": reptile}
