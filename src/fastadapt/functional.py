"""Pure tensor functions shared by the algorithms and the engine.

Nothing here holds state or touches a module: metrics, confidence intervals,
prototypes and pairwise distances, each stated with its shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class MeanCI(NamedTuple):
    """A mean with the half-width of its 95% confidence interval over ``n`` values."""

    mean: float
    ci95: float
    n: int


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of correct argmax predictions per task.

    Args:
        logits: ``(..., Q, ways)``.
        targets: ``(..., Q)`` int64 labels.

    Returns:
        ``(...)`` float accuracies in ``[0, 1]`` (a scalar for unbatched inputs).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}: "
            "expected logits (..., Q, ways) and targets (..., Q)"
        )
    return (logits.argmax(-1) == targets).float().mean(-1)


def mean_ci95(values: Tensor) -> MeanCI:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(n)`` of per-episode values.

    ``std`` is the population standard deviation (``ddof=0``), as in the MAML code
    (``ci95 = 1.96 * np.std(accs) / np.sqrt(n)``); at the usual ``n`` of 600 or
    1000 episodes the choice changes the half-width by under 0.1%.

    Args:
        values: ``(n,)`` one value per episode, ``n >= 1``.
    """
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value, got none")
    std = values.std(correction=0).item()
    return MeanCI(mean=values.mean().item(), ci95=1.96 * std / math.sqrt(n), n=n)


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means of support embeddings (Snell et al. 2017, eq. 1).

    Args:
        embeddings: ``(B, N, D)`` support embeddings.
        labels: ``(B, N)`` int64 labels in ``[0, ways)``.
        ways: number of classes.

    Returns:
        ``(B, ways, D)``; a class without support examples gets a zero prototype.
    """
    one_hot = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # (B, N, ways)
    sums = one_hot.transpose(1, 2) @ embeddings  # (B, ways, D)
    counts = one_hot.sum(1).clamp_min(1).unsqueeze(-1)  # (B, ways, 1)
    return sums / counts


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances.

    Args:
        a: ``(..., M, D)``.
        b: ``(..., N, D)``.

    Returns:
        ``(..., M, N)`` with entry ``[m, n] = ||a_m - b_n||^2`` (clamped at 0).
    """
    cross = a @ b.transpose(-1, -2)  # (..., M, N)
    return (a.pow(2).sum(-1, keepdim=True) - 2 * cross + b.pow(2).sum(-1).unsqueeze(-2)).clamp_min(0)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pairwise cosine similarities ``(..., M, N)`` of ``a`` ``(..., M, D)`` and ``b`` ``(..., N, D)``."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return a @ b.transpose(-1, -2)
