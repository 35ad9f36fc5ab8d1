"""Datasets: download with checksums, local copies, in-memory class-grouped tensors."""

from fastadapt.data.base import ClassAugmentation, ClassDataset, Rotations

__all__ = ["ClassAugmentation", "ClassDataset", "Rotations"]
