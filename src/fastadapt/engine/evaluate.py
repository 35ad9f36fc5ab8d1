"""The evaluation protocol: a predictor over a fixed, seeded set of episodes.

Episodes ``0 .. n-1`` of a task source are the evaluation set, identical in every
run, process and resume. The result is the mean of a per-episode metric with its
95% confidence half-width ``1.96 * std / sqrt(n)`` (``fastadapt.functional.mean_ci95``).
Under ``torchrun`` the evaluation batches are dealt out to the ranks and the
per-episode values gathered, so the mean and CI are over all ``n`` episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fastadapt.engine import distributed
from fastadapt.functional import accuracy, mean_ci95
from fastadapt.tasks.sampler import TaskSource
from fastadapt.tasks.spec import TaskSpec

Metric = Callable[[Tensor, Tensor], Tensor]


class Predictor(Protocol):
    """Adapts on support sets and scores queries, batched over tasks.

    ``(support_x (B, ways*shots, ...), support_y (B, ways*shots), query_x (B, ways*queries, ...))
    -> (B, ways*queries, ways)`` logits, or ``(B, queries, *target_shape)`` predictions for
    regression.
    """

    def __call__(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor: ...


def mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """Per-task mean squared error ``(B,)`` of ``(B, Q, ...)`` predictions and targets."""
    return (predictions - targets).pow(2).flatten(1).mean(1)


METRICS: dict[str, tuple[Metric, float, str]] = {
    # name: (per-task metric, display scale, unit)
    "accuracy": (accuracy, 100.0, " %"),
    "mse": (mse, 1.0, ""),
}


@dataclass(frozen=True)
class EvalResult:
    """Outcome of ``evaluate``.

    Attributes:
        metric: metric name (``"accuracy"``, ``"mse"``, ...).
        mean: mean over episodes (accuracy as a fraction in ``[0, 1]``).
        ci95: 95% confidence half-width, same unit as ``mean``.
        n: number of episodes.
        spec: the task spec evaluated.
        bn_policy: how BatchNorm statistics were computed, printed beside the figure.
        per_episode: ``(n,)`` the metric of each episode, in episode order.
    """

    metric: str
    mean: float
    ci95: float
    n: int
    spec: TaskSpec
    bn_policy: str
    per_episode: Tensor

    def __str__(self) -> str:
        scale, unit = METRICS[self.metric][1:] if self.metric in METRICS else (1.0, "")
        digits = 2 if scale == 100.0 else 4
        return (
            f"{self.metric} = {self.mean * scale:.{digits}f} ± {self.ci95 * scale:.{digits}f}{unit} "
            f"(n={self.n} episodes, {self.spec}, BN: {self.bn_policy})"
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (without the per-episode values)."""
        return {
            "metric": self.metric, "mean": self.mean, "ci95": self.ci95, "n": self.n,
            "ways": self.spec.ways, "shots": self.spec.shots, "queries": self.spec.queries,
            "bn_policy": self.bn_policy,
        }


def evaluate(
    predictor: Predictor,
    source: TaskSource,
    episodes: int,
    batch_size: int = 16,
    metric: str | Metric = "accuracy",
    bn_policy: str = "not stated",
    device: torch.device | str | None = None,
    progress: bool = False,
    world: distributed.World = distributed.SINGLE,
) -> EvalResult:
    """Run ``predictor`` on episodes ``0 .. episodes-1`` of ``source`` under ``torch.no_grad()``.

    Args:
        predictor: batched predictor (e.g. a meta-learner's ``predict``); gradient-based
            learners enable gradients internally where they adapt.
        source: the evaluation task source (its seed fixes the episode set).
        episodes: how many episodes (600 or 1000 in the papers).
        batch_size: episodes per predictor call; does not change the result.
        metric: ``"accuracy"``, ``"mse"`` or a function ``(outputs, query_y) -> (B,)``.
        bn_policy: text stating the BatchNorm statistics used, reported with the figure.
        device: where the predictor runs; batches are moved there.
        progress: show a tqdm progress bar.
        world: the torchrun group to split the episodes over (``fastadapt.engine.distributed``);
            every rank returns the same result over all ``episodes``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} or pass a function")
        name, fn = metric, METRICS[metric][0]
    else:
        name, fn = getattr(metric, "__name__", "metric"), metric
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    mine = distributed.eval_batches(-(-episodes // batch_size), world)
    ranges = [np.arange(j * batch_size, min((j + 1) * batch_size, episodes)) for j in mine]
    batches = (source.sample(indices) for indices in ranges)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(ranges), desc="evaluate", unit="batch")
    values = []
    with torch.no_grad():
        for batch in batches:
            if device is not None:
                batch = batch.to(device)
            outputs = predictor(batch.support_x, batch.support_y, batch.query_x)
            values.append(fn(outputs, batch.query_y).detach().float().cpu())
    per_episode = torch.cat(values) if values else torch.zeros(0)
    if world.active:
        positions = torch.from_numpy(np.concatenate(ranges)) if ranges else torch.zeros(0, dtype=torch.long)
        per_episode = distributed.gather_episodes(per_episode, positions, episodes, world)
    summary = mean_ci95(per_episode)
    return EvalResult(name, summary.mean, summary.ci95, summary.n, source.spec, bn_policy, per_episode)
