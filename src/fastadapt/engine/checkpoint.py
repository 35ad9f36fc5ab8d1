"""Durable checkpoints: atomic writes, loadable without executing code.

A checkpoint is a ``torch.save`` dict of tensors, numbers, strings, lists and
dicts only, read back with ``torch.load(weights_only=True)``. Writes go to a
temporary file in the same folder, are flushed to disk, then renamed over the
target, so a kill at any moment leaves either the old or the new file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastadapt.data.download import atomic_write


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename)."""
    with atomic_write(path) as f:
        torch.save(payload, f)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
