"""Labelled datasets held in memory, grouped by class, plus class-level augmentation.

A ``ClassDataset`` is the one input type of the episode sampler: an example
tensor sorted by class with the offset and size of every class, so an episode
is gathered by plain tensor indexing. Class-level augmentation (Omniglot's
rotations) multiplies the classes: augmented class ``c`` is base class
``c // variants`` transformed by variant ``c % variants``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@runtime_checkable
class ClassAugmentation(Protocol):
    """Turns each base class into ``variants`` distinct classes.

    ``__call__(x, variant)`` returns the examples ``x`` of shape ``(M, n, *example_shape)``
    (``n`` examples of each of ``M`` classes) transformed by the per-class variant ids
    ``variant`` ``(M,)``; it may modify ``x`` in place. Variant 0 must be the identity.
    """

    @property
    def name(self) -> str: ...

    @property
    def variants(self) -> int: ...

    def __call__(self, x: Tensor, variant: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Rotations:
    """Rotations by 0/90/180/270 degrees as four distinct classes (Santoro et al. 2016).

    Acts on the last two dimensions (``H, W``), which must be equal.
    """

    name: str = "rot90"
    variants: int = 4

    def __call__(self, x: Tensor, variant: Tensor) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotations need square examples, got {tuple(x.shape[-2:])}")
        for k in range(1, self.variants):
            (rows,) = torch.nonzero(variant == k, as_tuple=True)
            if len(rows):
                x[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
        return x


@dataclass(frozen=True)
class ClassDataset:
    """Examples of ``num_base_classes`` classes in one tensor, sorted by class.

    Attributes:
        x: ``(N, *example_shape)`` examples, class 0 first, then class 1, ...
        counts: ``(num_base_classes,)`` int64 examples per class (``sum == N``).
        class_names: one name per base class.
        augmentation: optional class-level augmentation.
    """

    x: Tensor
    counts: Tensor
    class_names: tuple[str, ...]
    augmentation: ClassAugmentation | None = None

    def __post_init__(self) -> None:
        if self.counts.ndim != 1 or len(self.class_names) != len(self.counts):
            raise ValueError(
                f"{len(self.class_names)} class names for {tuple(self.counts.shape)} class counts"
            )
        if int(self.counts.sum()) != len(self.x):
            raise ValueError(f"class counts sum to {int(self.counts.sum())}, x has {len(self.x)}")
        if len(self.counts) and int(self.counts.min()) < 1:
            empty = [self.class_names[i] for i in torch.nonzero(self.counts < 1).flatten()[:5]]
            raise ValueError(f"classes without examples: {empty}")

    @property
    def starts(self) -> Tensor:
        """``(num_base_classes,)`` index in ``x`` of each class's first example."""
        return torch.cumsum(self.counts, 0) - self.counts

    @property
    def num_base_classes(self) -> int:
        return len(self.counts)

    @property
    def variants(self) -> int:
        return 1 if self.augmentation is None else self.augmentation.variants

    @property
    def num_classes(self) -> int:
        """Classes the sampler sees: base classes times augmentation variants."""
        return self.num_base_classes * self.variants

    def class_name(self, cls: int) -> str:
        """Name of (augmented) class id ``cls``, e.g. ``'Greek/character03/rot90x2'``."""
        base, variant = divmod(cls, self.variants)
        if self.augmentation is None or variant == 0:
            return self.class_names[base]
        return f"{self.class_names[base]}/{self.augmentation.name}x{variant}"

    @cached_property
    def augmented(self) -> Tensor:
        """``(N * variants, *example_shape)``: row ``r * variants + v`` is variant ``v`` of ``x[r]``.

        Built once per dataset on first use, so samplers gather augmented examples
        with one ``index_select`` (costs ``variants`` times the memory of ``x``).
        """
        if self.augmentation is None:
            return self.x
        copies = self.x.unsqueeze(1).repeat(1, self.variants, *[1] * (self.x.ndim - 1))
        for v in range(1, self.variants):
            rows = torch.full((len(self.x),), v)
            copies[:, v] = self.augmentation(copies[:, v : v + 1], rows)[:, 0]
        return copies.flatten(0, 1)

    def with_augmentation(self, augmentation: ClassAugmentation | None) -> ClassDataset:
        return replace(self, augmentation=augmentation)

    def subset(self, classes: Sequence[int]) -> ClassDataset:
        """The base classes ``classes`` (in that order) as a new dataset."""
        idx = torch.as_tensor(list(classes), dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.num_base_classes):
            raise ValueError(f"class ids must lie in [0, {self.num_base_classes}), got {idx.tolist()}")
        starts, counts = self.starts[idx], self.counts[idx]
        rows = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), counts.tolist())])
        return ClassDataset(
            x=self.x[rows],
            counts=counts.clone(),
            class_names=tuple(self.class_names[i] for i in idx.tolist()),
            augmentation=self.augmentation,
        )

    @staticmethod
    def from_tensors(
        x: Tensor, y: Tensor, class_names: Sequence[str] | None = None
    ) -> ClassDataset:
        """Group a labelled tensor dataset by class.

        Args:
            x: ``(N, *example_shape)`` examples.
            y: ``(N,)`` integer labels (any values; classes are ordered by label value).
            class_names: names for the sorted distinct labels; default ``str(label)``.
        """
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"x and y must be tensors, got {type(x).__name__}, {type(y).__name__}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
        labels, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
        if class_names is None:
            class_names = [str(v) for v in labels.tolist()]
        elif len(class_names) != len(labels):
            raise ValueError(f"{len(class_names)} class names for {len(labels)} distinct labels")
        order = torch.argsort(inverse, stable=True)
        return ClassDataset(x=x[order], counts=counts.long(), class_names=tuple(class_names))

    @staticmethod
    def from_folder(
        root: str | Path,
        image_size: int | tuple[int, int] | None = None,
        grayscale: bool = False,
    ) -> ClassDataset:
        """Load images from ``root/<class name>/<image>`` (one sub-folder per class).

        Args:
            root: folder with one sub-folder per class; classes are sorted by name.
            image_size: resize every image to this ``(H, W)`` (or square side) with
                antialiasing; if ``None`` all images must already share one size.
            grayscale: load one channel instead of three.

        Returns:
            A dataset whose ``x`` is float32 ``(N, C, H, W)`` in ``[0, 1]``.
        """
        from PIL import Image

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        images: list[np.ndarray] = []
        counts: list[int] = []
        for folder in folders:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for path in files:
                with Image.open(path) as img:
                    img = img.convert("L" if grayscale else "RGB")
                    if size is not None:
                        img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
                    array = np.asarray(img, dtype=np.uint8)
                if images and array.shape != images[0].shape:
                    raise ValueError(
                        f"{path} has size {array.shape[:2]}, others {images[0].shape[:2]}; "
                        "pass image_size to resize"
                    )
                images.append(array)
            counts.append(len(files))
        x = torch.from_numpy(np.stack(images)).float().div_(255.0)
        x = x.unsqueeze(1) if grayscale else x.permute(0, 3, 1, 2).contiguous()
        return ClassDataset(
            x=x, counts=torch.tensor(counts), class_names=tuple(f.name for f in folders)
        )
