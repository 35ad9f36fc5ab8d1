"""Few-shot classification of your own images with a trained Prototypical Network.

    python examples/classify_my_images.py RUN_DIR_OR_CHECKPOINT SUPPORT_DIR QUERY_DIR [--invert]

SUPPORT_DIR holds one sub-folder per class with a few labelled images each (the
support set); QUERY_DIR holds the new images to classify. The learner adapts to
your classes from the support set alone (for a ProtoNet: one prototype per class)
and prints each query image's predicted class with its probability. Omniglot-trained
models expect bright strokes on a dark background: pass --invert for dark-on-light
drawings. Uses only the public API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastadapt.data import ClassDataset
from fastadapt.data.base import IMAGE_SUFFIXES
from fastadapt.engine import load_learner


def load_queries(folder: Path, size: int, invert: bool) -> tuple[list[Path], torch.Tensor]:
    """Query images as ``(Q, 1, size, size)`` float tensors in ``[0, 1]``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {folder}")
    images = [np.asarray(Image.open(p).convert("L").resize((size, size), Image.Resampling.LANCZOS)) for p in paths]
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1)
    return paths, 1 - x if invert else x


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify new images from a few labelled examples.")
    parser.add_argument("checkpoint", help="run directory or checkpoint of a trained learner")
    parser.add_argument("support", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("queries", type=Path, help="folder of images to classify")
    parser.add_argument("--invert", action="store_true", help="invert grey levels (dark strokes on light paper)")
    args = parser.parse_args()

    config, learner = load_learner(args.checkpoint)
    size = config.data.image_size
    support = ClassDataset.from_folder(args.support, image_size=size, grayscale=True)
    support_x = 1 - support.x if args.invert else support.x  # (N, 1, size, size)
    support_y = torch.repeat_interleave(torch.arange(support.num_base_classes), support.counts)  # (N,)
    paths, query_x = load_queries(args.queries, size, args.invert)

    with torch.no_grad():
        logits = learner.predict(support_x[None], support_y[None], query_x[None])[0]  # (Q, ways)
    probs = logits.softmax(-1)
    print(f"{support.num_base_classes} classes from {len(support_y)} support images; {config.name} ({args.checkpoint})")
    for path, p in zip(paths, probs):
        best = int(p.argmax())
        print(f"{path.name}: {support.class_names[best]} ({100 * p[best].item():.1f} %)")


if __name__ == "__main__":
    main()
