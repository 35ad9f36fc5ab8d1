"""Seeded same/different image pairs for verification training (Koch, Zemel & Salakhutdinov 2015).

Pair ``i`` of a ``PairSampler`` with seed ``s`` is a pure function of ``(s, i)``: a
coin with probability ``same_fraction`` decides whether it is a *same* pair (two
distinct examples of one class) or a *different* pair (one example of each of two
distinct classes). Classes are the dataset's augmented classes, so a rotated
character is a different class from its upright self. All draws come from
``fastadapt.counter_rng`` (stream ``STREAM_PAIRS``) and a batch is gathered with
one ``index_select``, like ``EpisodeSampler``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from fastadapt import counter_rng as rng
from fastadapt.data.base import ClassDataset
from fastadapt.tasks.sampler import choose_distinct
from fastadapt.tasks.spec import TaskSpec, check_indices, check_seed

# Sub-streams of rng.STREAM_PAIRS.
_SAME, _CLASSES, _SAME_EXAMPLES, _DIFFERENT_EXAMPLES = 0, 1, 2, 3


@dataclass(frozen=True)
class PairBatch:
    """A batch of ``B`` labelled pairs.

    Attributes:
        x1: ``(B, *example_shape)`` first examples.
        x2: ``(B, *example_shape)`` second examples.
        same: ``(B,)`` float, 1.0 where both examples are of the same class, else 0.0.
        indices: ``(B,)`` int64 the sampler's pair indices ``i`` (``None`` when unknown).
    """

    x1: Tensor
    x2: Tensor
    same: Tensor
    indices: Tensor | None = None

    def __post_init__(self) -> None:
        if self.x1.shape != self.x2.shape:
            raise ValueError(f"x1 {tuple(self.x1.shape)} and x2 {tuple(self.x2.shape)} must have the same shape")
        expected = (self.x1.shape[0],)
        for name in ("same", "indices"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return self.x1.shape[0]

    @property
    def query_y(self) -> Tensor:
        """``(B, 1)`` int64 targets (0: different, 1: same) for two-class pair logits ``(B, 1, 2)``.

        The name lets metrics written for episodes (``accuracy(logits, batch.query_y)``)
        score the siamese ``meta_loss`` output on pairs unchanged.
        """
        return self.same.long().unsqueeze(1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PairBatch:
        """Move every tensor to ``device``; ``dtype`` (if given) applies to floating tensors only."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


class PairSampler:
    """Draws same/different pairs from a ``ClassDataset`` (a ``TaskSource`` of ``PairBatch``es).

    Args:
        dataset: the labelled examples (with optional class augmentation); every
            class needs at least 2 examples.
        seed: non-negative int; pair ``i`` depends only on ``(seed, i)``.
        same_fraction: probability that a pair is a same pair, in ``[0, 1]``.

    Attributes:
        spec: the nominal ``TaskSpec(ways=2, shots=1, queries=1)`` (two classes at most,
            one example each side), so the sampler fits ``TaskSource``; a pair is not an
            episode, and the engine's batch size counts pairs.
        seed: the seed.

    Example:
        >>> data = ClassDataset.from_tensors(torch.randn(100, 3), torch.arange(100) % 10)
        >>> pairs = PairSampler(data, seed=0).sample(range(8))
        >>> tuple(pairs.x1.shape), tuple(pairs.same.shape)
        ((8, 3), (8,))
    """

    spec = TaskSpec(ways=2, shots=1, queries=1)

    def __init__(self, dataset: ClassDataset, seed: int = 0, same_fraction: float = 0.5) -> None:
        if not 0.0 <= same_fraction <= 1.0:
            raise ValueError(f"same_fraction must lie in [0, 1], got {same_fraction}")
        counts = dataset.counts.numpy()
        small = np.flatnonzero(counts < 2)
        if len(small):
            names = ", ".join(repr(dataset.class_names[c]) for c in small[:5])
            raise ValueError(f"same pairs need 2 examples per class; {len(small)} class(es) have 1: {names}")
        if dataset.num_classes < 2:
            raise ValueError(f"different pairs need 2 classes, the dataset has {dataset.num_classes}")
        self.dataset, self.seed, self.same_fraction = dataset, check_seed(seed), float(same_fraction)
        self._counts, self._starts = counts, dataset.starts.numpy()
        table_bytes = dataset.x.nbytes * dataset.variants
        self._precomputed = dataset.variants > 1 and table_bytes <= 2 * 1024**3

    def sample(self, indices: Sequence[int] | np.ndarray) -> PairBatch:
        """The pairs with the given indices as one batch, in that order."""
        pairs = check_indices(indices)
        batch = len(pairs)
        same = rng.uniform(self.seed, rng.STREAM_PAIRS, _SAME, pairs) < self.same_fraction  # (B,)
        classes = choose_distinct(
            np.full(batch, self.dataset.num_classes), 2, self.seed, rng.STREAM_PAIRS, _CLASSES, pairs
        )  # (B, 2)
        classes[:, 1] = np.where(same, classes[:, 0], classes[:, 1])
        base, variant = np.divmod(classes, self.dataset.variants)  # (B, 2)
        same_positions = choose_distinct(
            self._counts[base[:, 0]], 2, self.seed, rng.STREAM_PAIRS, _SAME_EXAMPLES, pairs
        )  # (B, 2), distinct
        different_positions = rng.integers(
            self._counts[base], self.seed, rng.STREAM_PAIRS, _DIFFERENT_EXAMPLES, pairs[:, None], np.arange(2)
        )  # (B, 2)
        positions = np.where(same[:, None], same_positions, different_positions)
        x = self._gather(self._starts[base] + positions, variant)  # (B, 2, *shape)
        return PairBatch(
            x1=x[:, 0], x2=x[:, 1], same=torch.from_numpy(same.astype(np.float32)), indices=torch.from_numpy(pairs)
        )

    def _gather(self, rows: np.ndarray, variant: np.ndarray) -> Tensor:
        """Examples ``rows`` ``(B, 2)`` (rows of ``dataset.x``) under class variants ``variant`` ``(B, 2)``."""
        if self._precomputed:
            rows = rows * self.dataset.variants + variant
            return self.dataset.augmented.index_select(0, torch.from_numpy(rows.reshape(-1))).unflatten(0, rows.shape)
        x = self.dataset.x.index_select(0, torch.from_numpy(rows.reshape(-1)))  # (2B, *shape)
        if self.dataset.augmentation is not None:
            x = self.dataset.augmentation(x.unsqueeze(1), torch.from_numpy(variant.reshape(-1))).squeeze(1)
        return x.unflatten(0, rows.shape)
