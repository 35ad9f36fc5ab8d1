"""A small synthetic image dataset for smoke tests and quick checks (no download).

Each class is a random smooth 1-channel pattern; its examples are the pattern
plus noise and a random shift, so a Conv-4 learns it in a few dozen episodes.
Split ``default``: 60 train / 20 val / 20 test classes of 20 examples each.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fastadapt.data.base import ClassDataset, Rotations

SPLITS = {"default": {"train": (0, 60), "val": (60, 80), "test": (80, 100)}}
EXAMPLES_PER_CLASS = 20


def load_synthetic(
    split: str = "default",
    partition: str = "train",
    rotations: bool = False,
    image_size: int = 28,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> ClassDataset:
    """The classes of ``partition``; ``x`` is float32 ``(N, 1, image_size, image_size)`` in ``[0, 1]``.

    ``data_dir``, ``cache_dir`` and ``download`` are accepted for a uniform loader signature
    and unused.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {sorted(SPLITS)}")
    first, last = SPLITS[split][partition]
    g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(last, 1, 7, 7, generator=g)
    patterns = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)[first:]
    noise = torch.rand(last, EXAMPLES_PER_CLASS, 1, image_size, image_size, generator=g)[first:]
    shifts = torch.randint(-2, 3, (last, EXAMPLES_PER_CLASS, 2), generator=g)[first:]
    examples = []
    for c in range(last - first):
        for e in range(EXAMPLES_PER_CLASS):
            dy, dx = shifts[c, e].tolist()
            examples.append(torch.roll(patterns[c], (dy, dx), dims=(-2, -1)) * 0.7 + noise[c, e] * 0.3)
    x = torch.stack(examples)
    data = ClassDataset(
        x=x,
        counts=torch.full((last - first,), EXAMPLES_PER_CLASS),
        class_names=tuple(f"pattern{c:03d}" for c in range(first, last)),
    )
    return data.with_augmentation(Rotations()) if rotations else data
