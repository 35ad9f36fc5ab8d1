"""What a task looks like (``TaskSpec``) and sampled tasks (``Episode``, ``EpisodeBatch``).

Labels inside an episode are episode-local, in ``[0, ways)``. Support and query
examples are stored class-major: example ``k`` of the support set has label
``support_y[k]``; the labels are explicit, so no algorithm needs to rely on
the order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import Tensor


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seed(seed: object) -> int:
    """Return ``seed`` if it is a non-negative int, else raise naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_indices(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Episode indices as a non-empty 1-D int64 array of values >= 0, else raise."""
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu":
        raise ValueError(f"episode indices must be a non-empty 1-D integer sequence, got {indices!r}")
    if array.min() < 0:
        raise ValueError(f"episode indices must be >= 0, got {int(array.min())}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class TaskSpec:
    """The shape of an N-way K-shot task.

    Args:
        ways: number of classes per task (1 for regression tasks).
        shots: labelled support examples per class (support points for regression).
        queries: query examples per class (query points for regression).
    """

    ways: int
    shots: int
    queries: int

    def __post_init__(self) -> None:
        _check_count("ways", self.ways, 1)
        _check_count("shots", self.shots, 1)
        _check_count("queries", self.queries, 1)

    @property
    def per_class(self) -> int:
        """Examples drawn from each class: ``shots + queries``."""
        return self.shots + self.queries

    def __str__(self) -> str:
        return f"{self.ways}-way {self.shots}-shot {self.queries}-query"


@dataclass(frozen=True)
class Episode:
    """One task.

    Attributes:
        support_x: ``(ways*shots, *example_shape)``.
        support_y: ``(ways*shots,)`` int64 labels in ``[0, ways)`` (classification),
            or ``(ways*shots, *target_shape)`` targets (regression).
        query_x: ``(ways*queries, *example_shape)``.
        query_y: like ``support_y`` for the queries.
        spec: the task's ``TaskSpec``.
        classes: ``(ways,)`` source class ids, ``classes[label]`` is the dataset class
            behind episode label ``label``; ``None`` for regression.
        extras: per-task facts of the task distribution (e.g. a sinusoid's amplitude).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    spec: TaskSpec
    classes: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def as_batch(self) -> EpisodeBatch:
        """This episode as a batch of one (leading task dimension of size 1)."""
        return EpisodeBatch(
            support_x=self.support_x.unsqueeze(0),
            support_y=self.support_y.unsqueeze(0),
            query_x=self.query_x.unsqueeze(0),
            query_y=self.query_y.unsqueeze(0),
            spec=self.spec,
            classes=None if self.classes is None else self.classes.unsqueeze(0),
            extras={k: v.unsqueeze(0) for k, v in self.extras.items()},
        )


@dataclass(frozen=True)
class EpisodeBatch:
    """A meta-batch of ``B`` episodes with the same ``TaskSpec``.

    Attributes:
        support_x: ``(B, ways*shots, *example_shape)``.
        support_y: ``(B, ways*shots)`` int64 labels, or ``(B, ways*shots, *target_shape)``.
        query_x: ``(B, ways*queries, *example_shape)``.
        query_y: ``(B, ways*queries)`` int64 labels, or ``(B, ways*queries, *target_shape)``.
        spec: the shared ``TaskSpec``.
        classes: ``(B, ways)`` source class ids, or ``None`` for regression.
        extras: per-task tensors with leading dimension ``B``.
        indices: ``(B,)`` the sampler's episode indices ``i`` (``-1`` when unknown).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    spec: TaskSpec
    classes: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)
    indices: Tensor | None = None

    def __post_init__(self) -> None:
        batch = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            size = getattr(self, name).shape[0]
            if size != batch:
                raise ValueError(f"{name} has {size} tasks but support_x has {batch}")
        spec = self.spec
        if self.support_x.shape[1] != spec.ways * spec.shots:
            raise ValueError(
                f"support_x holds {self.support_x.shape[1]} examples per task, "
                f"expected ways*shots = {spec.ways * spec.shots} for {spec}"
            )
        if self.query_x.shape[1] != spec.ways * spec.queries:
            raise ValueError(
                f"query_x holds {self.query_x.shape[1]} examples per task, "
                f"expected ways*queries = {spec.ways * spec.queries} for {spec}"
            )

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, task: int) -> Episode:
        return Episode(
            support_x=self.support_x[task],
            support_y=self.support_y[task],
            query_x=self.query_x[task],
            query_y=self.query_y[task],
            spec=self.spec,
            classes=None if self.classes is None else self.classes[task],
            extras={k: v[task] for k, v in self.extras.items()},
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[t] for t in range(len(self)))

    def _map(self, fn) -> EpisodeBatch:  # type: ignore[no-untyped-def]
        tensors = {
            f.name: fn(getattr(self, f.name))
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **tensors, extras={k: fn(v) for k, v in self.extras.items()})

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> EpisodeBatch:
        """Move every tensor to ``device``; ``dtype`` (if given) applies to floating tensors only."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self._map(move)

    def slice(self, start: int, stop: int) -> EpisodeBatch:
        """Tasks ``start:stop`` as a new batch (views, no copy)."""
        return self._map(lambda t: t[start:stop])

    @staticmethod
    def stack(episodes: Sequence[Episode]) -> EpisodeBatch:
        """Stack episodes with the same ``TaskSpec`` into a batch."""
        return EpisodeBatch.concat([e.as_batch() for e in episodes])

    @staticmethod
    def concat(batches: Sequence[EpisodeBatch]) -> EpisodeBatch:
        """Concatenate batches with the same ``TaskSpec`` along the task dimension."""
        if not batches:
            raise ValueError("cannot concatenate an empty sequence of batches")
        first = batches[0]
        for b in batches:
            if b.spec != first.spec:
                raise ValueError(f"cannot combine tasks of different specs: {first.spec} and {b.spec}")
            if (b.indices is None) != (first.indices is None):
                raise ValueError("cannot combine batches with and without episode indices")

        def cat(name: str) -> Tensor | None:
            values = [getattr(b, name) for b in batches]
            return None if values[0] is None else torch.cat(values)

        return EpisodeBatch(
            support_x=torch.cat([b.support_x for b in batches]),
            support_y=torch.cat([b.support_y for b in batches]),
            query_x=torch.cat([b.query_x for b in batches]),
            query_y=torch.cat([b.query_y for b in batches]),
            spec=first.spec,
            classes=cat("classes"),
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in first.extras},
            indices=cat("indices"),
        )
