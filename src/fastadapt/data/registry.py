"""Dataset registry: ``load_dataset(name, split, partition, ...) -> ClassDataset``.

A dataset loader takes ``(split, partition, rotations, image_size, data_dir, cache_dir, download)``
and returns the partition's classes as a ``ClassDataset``. Loaders import their
module lazily so listing datasets stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastadapt.data.base import ClassDataset
from fastadapt.registry import Registry

Loader = Callable[..., ClassDataset]
DATASETS: Registry[Loader] = Registry("dataset")
PARTITIONS = ("train", "val", "test")


def load_dataset(
    name: str,
    split: str,
    partition: str,
    rotations: bool = False,
    image_size: int = 28,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> ClassDataset:
    """Load ``partition`` (train/val/test) of the class split ``split`` of dataset ``name``.

    ``download=True`` fetches (and verifies) the dataset when no local copy is found.
    """
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; choose one of {PARTITIONS}")
    loader = DATASETS.get(name)
    return loader(
        split=split, partition=partition, rotations=rotations, image_size=image_size,
        data_dir=data_dir, cache_dir=cache_dir, download=download,
    )


@DATASETS.register("omniglot")
def _omniglot(**kwargs: object) -> ClassDataset:
    from fastadapt.data.omniglot import load_omniglot

    return load_omniglot(**kwargs)  # type: ignore[arg-type]


@DATASETS.register("synthetic")
def _synthetic(**kwargs: object) -> ClassDataset:
    from fastadapt.data.synthetic import load_synthetic

    return load_synthetic(**kwargs)  # type: ignore[arg-type]
