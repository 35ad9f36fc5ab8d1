"""The loop a user writes with torch alone (the reference for meta-gradient agreement).

MAML: ``torch.func.functional_call`` + ``torch.autograd.grad(create_graph=...)`` per task,
the query loss of each task back-propagated as it is computed (as in the PyTorch
MAML-Omniglot examples). ProtoNet: one backbone call over support and queries,
prototypes as class means, negative squared Euclidean distances. Reptile: a deep copy of
the model trained with ``torch.optim.Adam(betas=(0, 0.999))`` per task, then
``grad = mean_tasks(theta - phi)`` so that an SGD step of size epsilon is the Reptile update.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks import EpisodeBatch

NOTE = "torch.func.functional_call + torch.autograd.grad; written for this benchmark"


def version() -> str:
    return torch.__version__


def maml(config: BenchConfig, model: nn.Module) -> Backward:
    lr, steps = config.algorithm_args["inner_lr"], config.algorithm_args["inner_steps"]
    second_order = not config.algorithm_args.get("first_order", False)

    def backward(batch: EpisodeBatch) -> None:
        for t in range(len(batch)):
            fast = dict(model.named_parameters())
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, fast, (batch.support_x[t],)), batch.support_y[t])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
                fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
            query_loss = F.cross_entropy(functional_call(model, fast, (batch.query_x[t],)), batch.query_y[t])
            (query_loss / len(batch)).backward()

    return backward


def protonet(config: BenchConfig, model: nn.Module) -> Backward:
    def backward(batch: EpisodeBatch) -> None:
        tasks, n_support = batch.support_x.shape[:2]
        z = model(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])).flatten(1)
        # Labels are class-major, so a class's support embeddings are contiguous.
        protos = z[: tasks * n_support].view(tasks, config.ways, config.shots, -1).mean(2)  # (B, ways, D)
        z_query = z[tasks * n_support :].view(tasks, -1, z.shape[-1])  # (B, N_q, D)
        logits = -(z_query.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)  # (B, N_q, ways)
        F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()).backward()

    return backward


def reptile(config: BenchConfig, model: nn.Module) -> Backward:
    args = config.algorithm_args

    def backward(batch: EpisodeBatch) -> None:
        direction = [torch.zeros_like(p) for p in model.parameters()]
        for t in range(len(batch)):
            learner = copy.deepcopy(model)
            optimizer = torch.optim.Adam(learner.parameters(), lr=args["inner_lr"], betas=(0.0, 0.999))
            order = torch.arange(batch.support_x.shape[1]).view(config.ways, -1).t().flatten()  # shot-major
            for step in range(args["inner_steps"]):
                start = (step * args["inner_batch"]) % len(order)
                idx = order[start : start + args["inner_batch"]]
                optimizer.zero_grad()
                F.cross_entropy(learner(batch.support_x[t][idx]), batch.support_y[t][idx]).backward()
                optimizer.step()
            for d, p, q in zip(direction, model.parameters(), learner.parameters()):
                d += (p - q).detach() / len(batch)
        for p, d in zip(model.parameters(), direction):
            p.grad = d if p.grad is None else p.grad + d

    return backward


BACKWARD = {"maml": maml, "protonet": protonet, "reptile": reptile}
