"""Shared fixtures: small synthetic datasets and the real data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fastadapt.data.base import ClassDataset

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    """``$FASTADAPT_DATA`` if set, else ``../shared/datasets`` beside the repo, if it exists."""
    env = os.environ.get("FASTADAPT_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "datasets")
    return next((p for p in candidates if (p / "omniglot").is_dir()), None)


@pytest.fixture
def toy_dataset() -> ClassDataset:
    """12 classes with 6..17 examples each; example value encodes (class, index)."""
    counts = torch.arange(6, 18)
    y = torch.repeat_interleave(torch.arange(12), counts)
    index = torch.cat([torch.arange(int(n)) for n in counts])
    x = (y * 1000 + index).float().unsqueeze(-1)  # (N, 1): recover class and index from value
    return ClassDataset.from_tensors(x, y)


@pytest.fixture
def image_dataset() -> ClassDataset:
    """30 classes x 20 random 1x8x8 images."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(600, 1, 8, 8, generator=g)
    return ClassDataset.from_tensors(x, torch.arange(600) // 20)
