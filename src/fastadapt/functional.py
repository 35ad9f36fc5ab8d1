"""Pure tensor functions shared by the algorithms and the engine.

Nothing here holds state or changes a module: metrics, confidence intervals,
prototypes, pairwise distances and per-class reductions over a support set,
each stated with its shapes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fastadapt.runtime import compute_precision, resolve_precision


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


def embed_episodes(
    backbone: nn.Module, support_x: Tensor, query_x: Tensor, precision: str = "float32"
) -> tuple[Tensor, Tensor]:
    """Run ``backbone`` once over every task's support and query examples.

    Args:
        backbone: maps ``(N, *example_shape)`` to features ``(N, *feature_shape)``
            (embeddings ``(N, D)`` or feature maps ``(N, C, H, W)``).
        support_x: ``(B, N_s, *example_shape)``.
        query_x: ``(B, N_q, *example_shape)``.
        precision: ``"float32"``, ``"bfloat16"`` (backbone under autocast, features
            returned in the inputs' dtype) or ``"auto"`` (``fastadapt.runtime.resolve_precision``).

    Returns:
        ``(B, N_s, *feature_shape)`` and ``(B, N_q, *feature_shape)``, unflattened.
    """
    tasks, n_support, n_query = support_x.shape[0], support_x.shape[1], query_x.shape[1]
    precision = resolve_precision(precision, support_x.device.type)
    with compute_precision(precision, support_x.device.type):
        features = backbone(torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)]))  # (B*(N_s+N_q), *F)
    if precision != "float32":
        features = features.to(support_x.dtype)
    support, query = features.split([tasks * n_support, tasks * n_query])
    return support.unflatten(0, (tasks, n_support)), query.unflatten(0, (tasks, n_query))


def mask_by_class(scores: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Scores against support examples, split by the examples' classes.

    Args:
        scores: ``(B, Q, N)`` one score per (query, support example).
        labels: ``(B, N)`` int64 support labels in ``[0, ways)``.
        ways: number of classes.

    Returns:
        ``(B, Q, N, ways)``: ``scores[b, q, n]`` where ``labels[b, n] == c``, ``-inf`` elsewhere,
        ready for a reduction over ``N`` (``dim=-2``).
    """
    member = torch.nn.functional.one_hot(labels, ways).bool().unsqueeze(1)  # (B, 1, N, ways)
    return scores.unsqueeze(-1).masked_fill(~member, float("-inf"))


def class_logsumexp(scores: Tensor, labels: Tensor, ways: int) -> Tensor:
    """``log sum_{n: labels[n] = c} exp(scores[..., n])`` for every class ``c``.

    With ``scores = log_softmax(similarities)`` this is the log-probability of the
    attention-weighted one-hot label distribution of Matching Networks
    (Vinyals et al. 2016, eq. 1): ``log sum_n a(x, x_n) [y_n = c]``.

    Args:
        scores: ``(B, Q, N)``.
        labels: ``(B, N)`` int64 support labels in ``[0, ways)``.
        ways: number of classes.

    Returns:
        ``(B, Q, ways)``; ``-inf`` for a class without support examples.
    """
    return mask_by_class(scores, labels, ways).logsumexp(-2)


def class_max(scores: Tensor, labels: Tensor, ways: int) -> Tensor:
    """``max_{n: labels[n] = c} scores[..., n]`` for every class ``c``: ``(B, Q, ways)`` from
    ``scores`` ``(B, Q, N)`` and ``labels`` ``(B, N)``, shaped like ``class_logsumexp``."""
    return mask_by_class(scores, labels, ways).amax(-2)


def class_sums(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Per-class sums of support features (Relation Networks' K-shot class representation).

    Args:
        embeddings: ``(B, N, *feature_shape)``.
        labels: ``(B, N)`` int64 labels in ``[0, ways)``.
        ways: number of classes.

    Returns:
        ``(B, ways, *feature_shape)``; zeros for a class without support examples.
    """
    one_hot = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # (B, N, ways)
    sums = one_hot.transpose(1, 2) @ embeddings.flatten(2)  # (B, ways, prod(feature_shape))
    return sums.unflatten(-1, embeddings.shape[2:])
