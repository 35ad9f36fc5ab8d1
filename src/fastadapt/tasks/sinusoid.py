"""Sinusoid regression tasks of MAML (Finn, Abbeel & Levine 2017, section 5.1).

Task ``i``: ``y = A * sin(x - phase)`` with ``A ~ U[0.1, 5.0]``, ``phase ~ U[0, pi]``
and inputs ``x ~ U[-5, 5]``; ``shots`` support and ``queries`` query points,
all drawn from ``(seed, i)`` alone. The loss of the paper is the MSE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fastadapt import counter_rng as rng
from fastadapt.tasks.spec import EpisodeBatch, TaskSpec, check_indices, check_seed


def _check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high:
        raise ValueError(f"{name} must be an interval (low, high) with low < high, got {bounds}")
    return low, high


class SinusoidTasks:
    """The MAML sinusoid task distribution as addressable meta-batches.

    Args:
        shots: support points per task (``K`` in the paper).
        queries: query points per task; defaults to ``shots`` as in the paper.
        seed: non-negative int; task ``i`` depends only on ``(seed, i)``.
        amplitude, phase, x_range: the uniform ranges of the paper, overridable.

    Batches hold ``support_x``/``support_y`` ``(B, shots, 1)``, ``query_x``/``query_y``
    ``(B, queries, 1)`` float32, and ``extras['amplitude']``, ``extras['phase']`` ``(B,)``.
    """

    def __init__(
        self,
        shots: int = 10,
        queries: int | None = None,
        seed: int = 0,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.spec = TaskSpec(ways=1, shots=shots, queries=shots if queries is None else queries)
        self.seed = check_seed(seed)
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)

    @staticmethod
    def function(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """The task's target ``A * sin(x - phase)``; ``x`` ``(B, n, 1)``, the others ``(B,)``."""
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])

    def sample(self, indices: Sequence[int] | np.ndarray) -> EpisodeBatch:
        """Tasks ``indices`` as one meta-batch (see the class docstring for shapes)."""
        episodes = check_indices(indices)
        task = rng.uniform(self.seed, rng.STREAM_TASK, episodes[:, None], np.arange(2))  # (B, 2)
        amplitude = torch.from_numpy(self.amplitude[0] + task[:, 0] * np.ptp(self.amplitude))
        phase = torch.from_numpy(self.phase[0] + task[:, 1] * np.ptp(self.phase))
        points = self.spec.shots + self.spec.queries
        u = rng.uniform(self.seed, rng.STREAM_INPUTS, episodes[:, None], np.arange(points))
        x = torch.from_numpy(self.x_range[0] + u * np.ptp(self.x_range))[..., None]  # (B, n, 1)
        y = self.function(x, amplitude, phase)
        x, y = x.float(), y.float()
        k = self.spec.shots
        return EpisodeBatch(
            support_x=x[:, :k].contiguous(),
            support_y=y[:, :k].contiguous(),
            query_x=x[:, k:].contiguous(),
            query_y=y[:, k:].contiguous(),
            spec=self.spec,
            extras={"amplitude": amplitude.float(), "phase": phase.float()},
            indices=torch.from_numpy(episodes),
        )
