"""Seeded N-way K-shot episode sampling over a ``ClassDataset`` by tensor indexing.

Episode ``i`` of a sampler with seed ``s`` is a pure function of ``(s, i)`` (and
the dataset and spec): classes are drawn without replacement, support and query
examples are disjoint, and the order in which classes are drawn is the label
permutation, so labels are ``[0, ways)`` in random order. All draws come from
``fastadapt.counter_rng``, so a meta-batch of ``B`` episodes costs a few
vectorised operations and two ``index_select`` calls, whatever ``B`` is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from fastadapt import counter_rng as rng
from fastadapt.data.base import ClassDataset
from fastadapt.tasks.spec import Episode, EpisodeBatch, TaskSpec, check_indices, check_seed

# Rows with at least this many candidates per wanted draw use rejection sampling.
_SPARSE_RATIO = 4


def choose_distinct(high: np.ndarray, k: int, *coords: np.ndarray | int) -> np.ndarray:
    """``k`` distinct integers in ``[0, high[r])`` for every row ``r``, in random order.

    Each row depends only on its own coordinates and ``high[r]``. Rows with a large
    range keep the first ``k`` distinct values of ``2k + 8`` uniform draws (a
    uniformly random ordered sample without replacement); small ranges, and the
    rare rows whose draws repeat too often, sort ``high[r]`` random keys instead.

    Args:
        high: ``(R,)`` int64 exclusive upper bounds, each ``>= k``.
        k: how many distinct values per row.
        coords: row coordinates broadcastable to ``(R,)`` (seed, stream, episode, ...).

    Returns:
        ``(R, k)`` int64.
    """
    rows = len(high)
    coords_2d = [np.asarray(c)[..., None] if np.ndim(c) else c for c in coords]
    out = np.empty((rows, k), dtype=np.int64)
    sparse = high >= _SPARSE_RATIO * k
    if sparse.any():
        m = 2 * k + 8
        sel = [c[sparse] if np.ndim(c) else c for c in coords_2d]
        draws = rng.integers(high[sparse, None], *sel, np.arange(m))  # (R', m)
        earlier = np.tril(np.ones((m, m), dtype=bool), -1)  # [j, l]: l < j
        repeated = ((draws[:, :, None] == draws[:, None, :]) & earlier).any(-1)
        fresh = ~repeated & (np.cumsum(~repeated, axis=1) <= k)
        enough = fresh.sum(1) == k
        picked = np.flatnonzero(sparse)
        out[picked[enough]] = draws[enough][fresh[enough]].reshape(-1, k)
        sparse[picked[~enough]] = False
    dense = ~sparse
    if dense.any():
        width = int(high[dense].max())
        sel = [c[dense] if np.ndim(c) else c for c in coords_2d]
        keys = rng.uniform(*sel, rng.STREAM_FALLBACK, np.arange(width))  # (R'', width)
        keys[np.arange(width)[None, :] >= high[dense, None]] = np.inf
        out[dense] = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return out


@runtime_checkable
class TaskSource(Protocol):
    """Anything that draws addressable meta-batches: ``sample(indices) -> EpisodeBatch``."""

    spec: TaskSpec
    seed: int

    def sample(self, indices: Sequence[int] | np.ndarray) -> EpisodeBatch: ...


def batch_at(source: TaskSource, step: int, batch_size: int) -> EpisodeBatch:
    """Meta-batch ``step``: episodes ``[step * batch_size, (step + 1) * batch_size)``."""
    if step < 0 or batch_size < 1:
        raise ValueError(f"need step >= 0 and batch_size >= 1, got {step}, {batch_size}")
    return source.sample(np.arange(step * batch_size, (step + 1) * batch_size))


def iter_episodes(
    source: TaskSource, start: int, stop: int, batch_size: int
) -> Iterator[EpisodeBatch]:
    """Episodes ``start .. stop-1`` in meta-batches of at most ``batch_size`` (a fixed set)."""
    if not 0 <= start <= stop or batch_size < 1:
        raise ValueError(f"need 0 <= start <= stop and batch_size >= 1, got {start}, {stop}, {batch_size}")
    for first in range(start, stop, batch_size):
        yield source.sample(np.arange(first, min(first + batch_size, stop)))


class EpisodeSampler:
    """Draws N-way K-shot episodes from a ``ClassDataset``.

    Args:
        dataset: the labelled examples (with optional class augmentation).
        spec: ways, shots and queries per episode.
        seed: non-negative int; episode ``i`` depends only on ``(seed, i)``.
        drop_small_classes: skip classes with fewer than ``shots + queries`` examples
            instead of refusing the dataset.
        precompute_augmentation: gather augmented examples from a table of every
            variant of every example (``dataset.augmented``, built once and shared by
            the dataset's samplers) instead of transforming each batch; the default
            does so when the table takes at most 2 GiB.

    Example:
        >>> data = ClassDataset.from_tensors(torch.randn(100, 3), torch.arange(100) % 10)
        >>> batch = EpisodeSampler(data, TaskSpec(5, 1, 3), seed=0).sample(range(4))
        >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        ((4, 5, 3), (4, 15))
    """

    def __init__(
        self,
        dataset: ClassDataset,
        spec: TaskSpec,
        seed: int = 0,
        drop_small_classes: bool = False,
        precompute_augmentation: bool | None = None,
    ) -> None:
        self.dataset, self.spec, self.seed = dataset, spec, check_seed(seed)
        counts = dataset.counts.numpy()
        small = np.flatnonzero(counts < spec.per_class)
        if len(small) and not drop_small_classes:
            shown = ", ".join(f"{dataset.class_names[c]!r} ({counts[c]})" for c in small[:10])
            more = f" and {len(small) - 10} more" if len(small) > 10 else ""
            raise ValueError(
                f"{spec} needs {spec.per_class} examples per class (shots + queries), but "
                f"{len(small)} classes have fewer: {shown}{more}. Lower shots/queries or pass "
                "drop_small_classes=True"
            )
        base = np.flatnonzero(counts >= spec.per_class)
        variants = dataset.variants
        # Eligible (augmented) class ids, ascending.
        self._classes = (base[:, None] * variants + np.arange(variants)).reshape(-1)
        if len(self._classes) < spec.ways:
            raise ValueError(
                f"{spec} needs {spec.ways} classes with >= {spec.per_class} examples; "
                f"the dataset has {len(self._classes)} ({dataset.num_base_classes} base classes "
                f"x {variants} variants, {len(small)} too small)"
            )
        self._counts = counts
        self._starts = dataset.starts.numpy()
        if precompute_augmentation is None:
            table_bytes = dataset.x.nbytes * dataset.variants
            precompute_augmentation = dataset.variants > 1 and table_bytes <= 2 * 1024**3
        self._precomputed = bool(precompute_augmentation) and dataset.variants > 1
        self._support_y = torch.arange(spec.ways).repeat_interleave(spec.shots)
        self._query_y = torch.arange(spec.ways).repeat_interleave(spec.queries)

    @staticmethod
    def from_tensors(x: Tensor, y: Tensor, spec: TaskSpec, seed: int = 0) -> EpisodeSampler:
        """Sampler over a labelled tensor dataset (see ``ClassDataset.from_tensors``)."""
        return EpisodeSampler(ClassDataset.from_tensors(x, y), spec, seed)

    @staticmethod
    def from_folder(
        root: str | Path, spec: TaskSpec, seed: int = 0, image_size: int | None = None,
        grayscale: bool = False,
    ) -> EpisodeSampler:
        """Sampler over ``root/<class>/<image>`` (see ``ClassDataset.from_folder``)."""
        data = ClassDataset.from_folder(root, image_size=image_size, grayscale=grayscale)
        return EpisodeSampler(data, spec, seed)

    @property
    def num_classes(self) -> int:
        """Classes episodes are drawn from (after augmentation and dropping)."""
        return len(self._classes)

    def episode(self, index: int) -> Episode:
        """Episode ``index`` on its own."""
        return self.sample([index])[0]

    def sample(self, indices: Sequence[int] | np.ndarray) -> EpisodeBatch:
        """The episodes with the given indices as one meta-batch, in that order."""
        episodes = check_indices(indices)
        spec, batch = self.spec, len(episodes)
        slots = choose_distinct(
            np.full(batch, self.num_classes), spec.ways, self.seed, rng.STREAM_CLASSES, episodes
        )  # (B, ways)
        classes = self._classes[slots]
        base, variant = np.divmod(classes, self.dataset.variants)
        position = choose_distinct(
            self._counts[base].reshape(-1),
            spec.per_class,
            self.seed,
            rng.STREAM_EXAMPLES,
            np.repeat(episodes, spec.ways),
            np.tile(np.arange(spec.ways), batch),
        ).reshape(batch, spec.ways, spec.per_class)
        rows = self._starts[base][..., None] + position  # (B, ways, shots+queries)
        if self._precomputed:
            rows = rows * self.dataset.variants + variant[..., None]
        rows_t, variant_t = torch.from_numpy(rows), torch.from_numpy(variant.reshape(-1))
        support_x = self._gather(rows_t[..., : spec.shots], variant_t)
        query_x = self._gather(rows_t[..., spec.shots :], variant_t)
        return EpisodeBatch(
            support_x=support_x,
            support_y=self._support_y.repeat(batch, 1),
            query_x=query_x,
            query_y=self._query_y.repeat(batch, 1),
            spec=spec,
            classes=torch.from_numpy(classes),
            indices=torch.from_numpy(episodes),
        )

    def _gather(self, rows: Tensor, variant: Tensor) -> Tensor:
        batch, ways, per_class = rows.shape
        table = self.dataset.augmented if self._precomputed else self.dataset.x
        x = table.index_select(0, rows.reshape(-1))  # (B*ways*n, *shape)
        if self.dataset.augmentation is not None and not self._precomputed:
            x = x.view(batch * ways, per_class, *x.shape[1:])
            x = self.dataset.augmentation(x, variant)
        return x.reshape(batch, ways * per_class, *self.dataset.x.shape[1:])
