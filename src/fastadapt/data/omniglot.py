"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1,623 handwritten characters of 50 alphabets,
20 drawings each; ``images_background`` has 30 alphabets / 964 characters, ``images_evaluation`` 20 / 659.

Sources, in ``<data_dir>/omniglot/``: per set, the archive ``<set>.zip`` (read in place) or the
extracted folder ``<set>/``. Official archives (md5) are used as they are; other copies, and folders,
only if their structure checks out (30/964 and 20/659 alphabets/characters, 20 images each), with a
one-line warning on the ``fastadapt.data`` logger. Decoded once into
``<cache_dir>/omniglot/omniglot-<S>px-<key>.npz`` (uncompressed; ``<key>`` hashes ``S`` and the
sources' names, sizes and mtimes): grayscale, inverted so strokes are bright on a 0 background, resized
from mode ``'L'`` with Pillow's LANCZOS filter. Classes are the characters, sorted by their name
``'Alphabet/characterNN'`` (alphabet names are unique across the sets).

Class splits (``split`` / ``partition``; within a partition classes stay in sorted order):

* ``vinyals``: Vinyals et al. 2016 as shipped by Snell et al. 2017 (ProtoNets), in
  ``fastadapt/data/splits/vinyals_*.txt``. train 1028: 25 background alphabets plus Angelic,
  Atemayar_Qelisayer, Atlantean, Aurek-Besh, Avesta, Ge_ez, Glagolitic and Gurmukhi 01-41 (evaluation);
  val 172: Armenian, Bengali, Early_Aramaic, Hebrew, Mkhedruli_(Georgian) (background); test 423, all
  evaluation: Gurmukhi 42-45, Kannada, Keble, Malayalam, Manipuri, Mongolian,
  Old_Church_Slavonic_(Cyrillic), Oriya, Sylheti, Syriac_(Serto), Tengwar, Tibetan, ULOG.
* ``maml``: after Finn et al. 2017 (cbfinn/maml: 1200 train / 423 test characters of a shuffle), the
  1,623 sorted names permuted by ``counter_rng`` with seed 1, then 1100 train / 100 val (held out of
  the 1200) / 423 test. The original assignment depended on ``os.listdir`` order and cannot be
  reproduced: same protocol, not the same characters.
* ``lake``: background (964) = ``train``, evaluation (659) = ``test``; no ``val``.

``rotations=True`` adds 90/180/270-degree rotations as new classes (``Rotations``), as all three do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from fastadapt import counter_rng as rng
from fastadapt.data import settings
from fastadapt.data.base import ClassDataset, Rotations
from fastadapt.data.download import FileTree, atomic_write, download_file, file_hash
from fastadapt.data.settings import DATA_ENV, describe_source
from fastadapt.registry import suggest

logger = logging.getLogger("fastadapt.data")

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
BACKGROUND, EVALUATION = "images_background", "images_evaluation"
SETS = (BACKGROUND, EVALUATION)
OFFICIAL_MD5 = {
    BACKGROUND: "68d2efa1b9178cc56df9314c21c6e718",
    EVALUATION: "6b91aef0f799c5bb55b94e3f2daec811",
}
EXPECTED = {BACKGROUND: (30, 964), EVALUATION: (20, 659)}  # (alphabets, characters)
IMAGES_PER_CHARACTER = 20
SPLITS = {"vinyals": ("train", "val", "test"), "maml": ("train", "val", "test"), "lake": ("train", "test")}
MAML_SIZES = {"train": 1100, "val": 100, "test": 423}
MAML_SEED = 1
_MAML_STREAM = 101  # counter_rng stream of the maml class permutation (samplers use 1..6)
_CACHE_VERSION = 1
_REMEDY = (
    "Either download it with `fastadapt data omniglot --download` (or load_omniglot(download=True)), or "
    f"point --data-dir / ${DATA_ENV} at a folder whose omniglot/ sub-folder holds images_background.zip "
    "and images_evaluation.zip (or the extracted folders)."
)

Member = tuple[str, ...]  # (alphabet, character, file name)


class OmniglotArrays(NamedTuple):
    """All decoded classes, sorted by name.

    Attributes:
        images: ``(N, S, S)`` uint8, strokes bright; class 0's images first.
        labels: ``(N,)`` int64 class index of every image (non-decreasing).
        alphabets: ``(C,)`` alphabet of every class.
        characters: ``(C,)`` character folder of every class (``'character03'``).
        sets: ``(C,)`` ``'images_background'`` or ``'images_evaluation'`` per class.
        path: the cache file.
    """

    images: np.ndarray
    labels: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]
    sets: tuple[str, ...]
    path: Path

    @property
    def class_names(self) -> tuple[str, ...]:
        """``'Alphabet/characterNN'`` per class."""
        return tuple(f"{a}/{c}" for a, c in zip(self.alphabets, self.characters))


def _inspect(name: str, source: FileTree) -> tuple[list[Member], list[str], str | None]:
    """(members, structure problems, md5 or ``None`` for a folder) of one set."""
    members = source.files(".png", 3)
    per_character = Counter(m[:2] for m in members)
    found = {"alphabets": len({m[0] for m in members}), "characters": len(per_character)}
    expected = dict(zip(found, EXPECTED[name]))
    problems = [f"{found[k]} {k} (expected {expected[k]})" for k in found if found[k] != expected[k]]
    odd = [f"{a}/{c} ({n})" for (a, c), n in sorted(per_character.items()) if n != IMAGES_PER_CHARACTER]
    if odd:
        shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        problems.append(f"{len(odd)} characters without {IMAGES_PER_CHARACTER} images: {shown}")
    return members, problems, file_hash(source.path, "md5") if source.is_archive else None


def _find(root: Path) -> dict[str, FileTree]:
    folder, found = root / "omniglot", {}
    for name in SETS:
        if (folder / f"{name}.zip").is_file():
            found[name] = FileTree(folder / f"{name}.zip", top=name)
        elif (folder / name).is_dir():
            found[name] = FileTree(folder / name)
    return found


def _sources(data_dir: str | Path | None, download: bool = False) -> dict[str, FileTree]:
    """Both sets (downloaded if missing and asked to); else ``FileNotFoundError`` saying where it looked."""
    root = settings.data_dir(data_dir)
    sources = _find(root)
    if len(sources) < len(SETS) and download:
        download_omniglot(root)
        sources = _find(root)
    missing = [n for n in SETS if n not in sources]
    if missing:
        raise FileNotFoundError(
            f"Omniglot not found: looked for {' and '.join(f'{n}.zip or {n}/' for n in missing)} in "
            f"{root / 'omniglot'} (data dir from {describe_source(data_dir, DATA_ENV)}). {_REMEDY}"
        )
    return sources


def locate_omniglot(data_dir: str | Path | None = None) -> dict[str, list[Member]]:
    """Find and check the local copy; return each set's sorted ``(alphabet, character, file)`` members.

    Logs one warning on ``fastadapt.data`` if the copy is not the official archives but checks out.

    Raises:
        FileNotFoundError: a set is missing; the message says where it looked and what to do.
        ValueError: the copy is unreadable or its structure is wrong; the message says what is wrong.
    """
    sources = _sources(data_dir)
    found = {name: _inspect(name, src) for name, src in sources.items()}
    broken = [f"{sources[n].describe()}: {'; '.join(p)}" for n, (_, p, _) in found.items() if p]
    shared = {m[0] for m in found[BACKGROUND][0]} & {m[0] for m in found[EVALUATION][0]}
    broken += [f"alphabets in both sets: {sorted(shared)[:5]}"] if shared else []
    folder = sources[BACKGROUND].path.parent
    if broken:
        raise ValueError(
            f"the Omniglot copy in {folder} is not usable: {'. '.join(broken)}. Expected 30 alphabets / "
            f"964 characters in {BACKGROUND} and 20 / 659 in {EVALUATION}, 20 images each. {_REMEDY}"
        )
    unofficial = [
        sources[n].describe() + (f" md5 {md5} != {OFFICIAL_MD5[n]}" if md5 else " (folder, no checksum)")
        for n, (_, _, md5) in found.items() if md5 != OFFICIAL_MD5[n]
    ]
    if unofficial:
        logger.warning(
            "Omniglot in %s is not the official release (%s); accepted because its structure checks "
            "out: 50 alphabets, 1,623 characters, 20 images each", folder, ", ".join(unofficial),
        )
    return {name: found[name][0] for name in SETS}


def _decode_png(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        gray = Image.open(io.BytesIO(data)).convert("L")  # in-memory bytes: nothing to close
        if gray.size != (size, size):
            gray = gray.resize((size, size), Image.Resampling.LANCZOS)
        # Strokes bright on black; inverting after the linear resize differs only by rounding, and is cheaper.
        return 255 - np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode Omniglot image {where}: {err}") from err


def _decode(
    sources: dict[str, FileTree], found: dict[str, list[Member]], size: int, path: Path
) -> OmniglotArrays:
    entries = sorted((m, name) for name in SETS for m in found[name])  # by alphabet, character, file
    classes = sorted({(*m[:2], name) for m, name in entries})
    index = {k[:2]: i for i, k in enumerate(classes)}
    images = np.empty((len(entries), size, size), dtype=np.uint8)
    with ExitStack() as stack:
        readers = {name: sources[name].reader(stack) for name in SETS}
        for i, (m, name) in enumerate(entries):
            images[i] = _decode_png(readers[name](m), size, f"{sources[name].path}:{'/'.join(m)}")
    labels = np.array([index[m[:2]] for m, _ in entries], dtype=np.int64)
    alphabets, characters, sets = (tuple(k[j] for k in classes) for j in range(3))
    return OmniglotArrays(images, labels, alphabets, characters, sets, path)


def _load_cache(path: Path, size: int) -> OmniglotArrays:
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
        texts = [tuple(str(v) for v in npz[k]) for k in ("alphabets", "characters", "sets")]
    if images.shape[1:] != (size, size) or len(labels) != len(images) or np.any(np.diff(labels) < 0):
        raise ValueError(f"inconsistent arrays: images {images.shape}, labels {labels.shape}")
    return OmniglotArrays(images, labels, texts[0], texts[1], texts[2], path)


def _cache_path(sources: dict[str, FileTree], root: Path, size: int) -> Path:
    fingerprints = {n: sources[n].fingerprint(".png", 3) for n in SETS}
    spec = json.dumps({"version": _CACHE_VERSION, "size": size, "sources": fingerprints}, sort_keys=True)
    return root / "omniglot" / f"omniglot-{size}px-{hashlib.sha256(spec.encode()).hexdigest()[:16]}.npz"


def decode_omniglot(
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    image_size: int = 28,
    download: bool = False,
) -> OmniglotArrays:
    """All 1,623 classes as arrays, decoded once and cached (arguments as in ``load_omniglot``).

    A cache whose key matches the sources and ``image_size`` is loaded with ``allow_pickle=False``;
    otherwise the copy is checked (``locate_omniglot``), decoded and written atomically, and older
    caches of the same size are deleted.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= 105:
        raise ValueError(f"image_size must be an int in [1, 105] (the originals' size), got {image_size!r}")
    sources = _sources(data_dir, download)
    path = _cache_path(sources, settings.cache_dir(cache_dir), image_size)
    if path.is_file():
        try:
            return _load_cache(path, image_size)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            logger.warning("Omniglot cache %s is unreadable (%s); decoding again", path, err)
    start = time.perf_counter()
    arrays = _decode(sources, locate_omniglot(data_dir), image_size, path)
    with atomic_write(path) as f:
        np.savez(f, images=arrays.images, labels=arrays.labels, alphabets=np.array(arrays.alphabets),
                 characters=np.array(arrays.characters), sets=np.array(arrays.sets))
    for stale in set(path.parent.glob(f"omniglot-{image_size}px-*.npz")) - {path}:
        stale.unlink(missing_ok=True)
    logger.info("decoded %d Omniglot images in %.1f s", len(arrays.images), time.perf_counter() - start)
    return arrays


def _check_partition(split: str, partition: str) -> None:
    if split not in SPLITS:
        hint = suggest(split, list(SPLITS))
        raise ValueError(f"unknown Omniglot split {split!r}{hint} (available: {', '.join(SPLITS)})")
    if partition not in SPLITS[split]:
        available = ", ".join(SPLITS[split])
        raise ValueError(f"Omniglot split {split!r} has no partition {partition!r}; available: {available}")


def split_classes(split: str, partition: str, class_names: Sequence[str], sets: Sequence[str]) -> list[int]:
    """Ascending indices into ``class_names`` of the classes of ``split`` / ``partition``.

    Args:
        split: ``'vinyals'``, ``'maml'`` or ``'lake'`` (see the module docstring).
        partition: ``'train'``, ``'val'`` or ``'test'`` (``'lake'`` has no ``'val'``).
        class_names: ``'Alphabet/characterNN'`` of all 1,623 classes.
        sets: ``'images_background'`` or ``'images_evaluation'`` of every class.
    """
    _check_partition(split, partition)
    if split == "lake":
        return [i for i, s in enumerate(sets) if s == (BACKGROUND if partition == "train" else EVALUATION)]
    if split == "vinyals":  # package data, one 'Alphabet/characterNN' per line
        text = resources.files("fastadapt.data").joinpath("splits", f"vinyals_{partition}.txt").read_text()
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        index = {name: i for i, name in enumerate(class_names)}
        if any(n not in index for n in names):
            missing = sorted(set(names) - set(index))[:5]
            raise ValueError(f"vinyals {partition} characters missing from the data: {missing}")
        return sorted(index[n] for n in names)
    total = sum(MAML_SIZES.values())
    if len(class_names) != total:
        raise ValueError(f"the maml split needs all {total} Omniglot characters, got {len(class_names)}")
    order = np.array(sorted(range(total), key=class_names.__getitem__))
    permuted = order[np.argsort(rng.uniform(MAML_SEED, _MAML_STREAM, np.arange(total)), kind="stable")]
    start = sum(MAML_SIZES[p] for p in SPLITS["maml"][: SPLITS["maml"].index(partition)])
    return sorted(permuted[start : start + MAML_SIZES[partition]].tolist())


def load_omniglot(
    split: str = "vinyals",
    partition: str = "train",
    rotations: bool = True,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    image_size: int = 28,
    download: bool = False,
) -> ClassDataset:
    """One partition of an Omniglot class split as an in-memory ``ClassDataset``.

    Args:
        split: ``'vinyals'`` (1028/172/423), ``'maml'`` (1100/100/423) or ``'lake'`` (964/-/659).
        partition: ``'train'``, ``'val'`` or ``'test'``.
        rotations: add each character's 90/180/270-degree rotations as 3 more classes.
        data_dir: folder holding ``omniglot/``; default ``$FASTADAPT_DATA`` or ``~/.cache/fastadapt/data``.
        cache_dir: cache folder; default ``$FASTADAPT_CACHE`` or ``~/.cache/fastadapt/cache``.
        image_size: side ``S`` of the square images, in ``[1, 105]`` (part of the cache key).
        download: fetch the official archives into ``data_dir`` if no local copy is found.

    Returns:
        ``x`` float32 ``(N, 1, S, S)`` in ``[0, 1]``, bright strokes, 20 images per class, class
        names ``'Alphabet/characterNN'``, ``Rotations()`` attached if ``rotations``.
    """
    _check_partition(split, partition)
    arrays = decode_omniglot(data_dir, cache_dir, image_size, download)
    names = arrays.class_names
    classes = np.array(split_classes(split, partition, names, arrays.sets), dtype=np.int64)
    counts = np.bincount(arrays.labels, minlength=len(names))
    starts = np.cumsum(counts) - counts
    rows = np.concatenate([np.arange(starts[c], starts[c] + counts[c]) for c in classes])
    x = torch.from_numpy(arrays.images[rows]).unsqueeze(1).float().div_(255.0)  # (N, 1, S, S)
    return ClassDataset(
        x=x, counts=torch.from_numpy(counts[classes]), class_names=tuple(names[c] for c in classes),
        augmentation=Rotations() if rotations else None,
    )


def download_omniglot(
    data_dir: str | Path | None = None, base_url: str | None = None, timeout: float = 60.0
) -> Path:
    """Download the official archives into ``<data_dir>/omniglot/`` (returned), verifying their md5.

    An archive already there with the official md5 is kept; any other file of that name is
    replaced, but only once the new download has been verified.

    Args:
        data_dir: where ``omniglot/`` goes; default as in ``fastadapt.data.settings``.
        base_url: URL of the folder holding the two archives; default ``OFFICIAL_URL``.
        timeout: seconds per network operation.
    """
    folder = settings.data_dir(data_dir) / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{folder} is not writable; point --data-dir / ${DATA_ENV} at a writable one")
    for name in SETS:
        dest, url = folder / f"{name}.zip", f"{(base_url or OFFICIAL_URL).rstrip('/')}/{name}.zip"
        if not dest.is_file() or file_hash(dest, "md5") != OFFICIAL_MD5[name]:
            logger.info("downloading %s into %s", url, folder)
            download_file(url, dest, md5=OFFICIAL_MD5[name], timeout=timeout)
    return folder


def _cache_lines(sources: dict[str, FileTree], root: Path, size: int) -> list[str]:
    cached = sorted((root / "omniglot").glob("omniglot-*px-*.npz"))
    if len(sources) < len(SETS):
        return [f"cache dir: {root}", f"cache: n/a without the data ({len(cached)} cache file(s))"]
    path = _cache_path(sources, root, size)
    stale = [p.name for p in cached if p.name.startswith(f"omniglot-{size}px-") and p != path]
    state = f"stale ({', '.join(stale)} was built from other sources)" if stale else "absent"
    state = f"present ({path.stat().st_size / 2**20:.1f} MiB)" if path.is_file() else state
    return [f"cache dir: {root}", f"cache ({size}px): {path}: {state}"]


def verify_report(
    data_dir: str | Path | None = None, cache_dir: str | Path | None = None, image_size: int = 28
) -> str:
    """A multi-line, human-readable report of the local Omniglot copy and its cache.

    Where it looked; each set's archive or folder with alphabet/character/image counts, its md5 and
    whether that is the official one; whether the copy is usable; the cache file's path, state
    (present / absent / stale) and size. Missing or broken data is reported, not raised.
    """
    root = settings.data_dir(data_dir)
    sources = _find(root)
    lines = ["Omniglot (Lake et al. 2015)", f"data dir: {root} (from {describe_source(data_dir, DATA_ENV)})"]
    faults = []
    for name in SETS:
        if name not in sources:
            lines.append(f"{name}: MISSING (no {name}.zip or {name}/ in {root / 'omniglot'})")
            faults.append(f"{name} missing")
            continue
        source = sources[name]
        kind = f"archive, {source.path.stat().st_size:,} bytes" if source.is_archive else "extracted folder"
        lines.append(f"{name}: {source.path} ({kind})")
        try:
            members, problems, md5 = _inspect(name, source)
        except (OSError, ValueError) as err:
            lines.append(f"  unreadable: {err}")
            faults.append(f"{name} unreadable")
            continue
        counts = f"{len({m[0] for m in members})} alphabets, {len({m[:2] for m in members})} characters"
        lines.append(f"  {counts}, {len(members):,} images")
        lines.append(f"  structure: {'; '.join(problems) or 'OK (20 images per character)'}")
        verdict = "official" if md5 == OFFICIAL_MD5[name] else f"NOT the official {OFFICIAL_MD5[name]}"
        lines.append(f"  md5: {md5} ({verdict})" if md5 else "  md5: n/a (folder; checked by structure only)")
        faults += [f"{name} has the wrong structure"] if problems else []
    lines.append(f"usable: no ({', '.join(faults)})" if faults else "usable: yes")
    return "\n".join(lines + _cache_lines(sources, settings.cache_dir(cache_dir), image_size))
