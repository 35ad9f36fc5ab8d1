"""Omniglot: real-data structure and counts, decoding, cache, splits, local copies, errors.

The real data is ``$FASTADAPT_DATA`` if that holds ``omniglot/``, else ``../shared/datasets``
beside the repository; the tests that need it are skipped, naming the path, where neither exists.
It is decoded into a temporary cache once per session.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.data import omniglot as om
from fastadapt.data.download import ChecksumError, file_hash

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO / ".." / "shared" / "datasets"
VINYALS_TEST_ALPHABETS = {
    "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
}
VINYALS_VAL_ALPHABETS = {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}


def real_data_dir() -> Path:
    env = os.environ.get("FASTADAPT_DATA", "")
    root = Path(env) if env and (Path(env) / "omniglot").is_dir() else DEFAULT_DATA.resolve()
    if not (root / "omniglot").is_dir():
        pytest.skip(f"no Omniglot copy at {root / 'omniglot'} (set FASTADAPT_DATA to a folder with it)")
    return root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return real_data_dir()


@pytest.fixture(scope="session")
def decoded(data_dir, tmp_path_factory) -> tuple[Path, om.OmniglotArrays, float]:
    """(cache dir, arrays, cold-decode seconds): the real data decoded once at 28x28."""
    cache = tmp_path_factory.mktemp("omniglot-cache")
    start = time.perf_counter()
    arrays = om.decode_omniglot(data_dir, cache)
    return cache, arrays, time.perf_counter() - start


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def png(ink: int = 0) -> bytes:
    """A 105x105 mode-'1' PNG like Omniglot's: white, with a black ``ink`` x ``ink`` square."""
    image = Image.new("1", (105, 105), 1)
    image.paste(0, (0, 0, ink, ink))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fake_copy(root: Path, alphabets: int, characters: int, images: int, folders: bool = False) -> Path:
    """A tiny Omniglot-like copy under ``root/omniglot``: two archives, or two extracted folders.

    Image ``i`` of character ``c`` of alphabet ``a`` is a black square of side ``10 + 10a + 4c + i``
    on white, so images differ and their decoded order can be checked.
    """
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    for name in om.SETS:
        grid = itertools.product(range(alphabets), range(characters), range(images))
        files = {
            f"{name[7:]}{a}/character{c + 1:02d}/{a:04d}_{i + 1:02d}.png": png(10 + 10 * a + 4 * c + i)
            for a, c, i in grid
        }
        if folders:
            for relative, data in files.items():
                (folder / name / relative).parent.mkdir(parents=True, exist_ok=True)
                (folder / name / relative).write_bytes(data)
        else:
            with zipfile.ZipFile(folder / f"{name}.zip", "w") as zf:
                for relative, data in files.items():
                    zf.writestr(f"{name}/{relative}", data)
    return root


# --- counts, pixels and the cache ------------------------------------------------------------


def test_counts(decoded):
    _, arrays, _ = decoded
    assert arrays.images.shape == (32_460, 28, 28) and arrays.images.dtype == np.uint8
    assert len(arrays.class_names) == len(set(arrays.class_names)) == 1_623
    assert np.array_equal(np.bincount(arrays.labels), np.full(1_623, 20))
    assert np.all(np.diff(arrays.labels) >= 0)
    assert list(arrays.class_names) == sorted(arrays.class_names)  # deterministic, sorted order
    sets = np.array(arrays.sets)
    assert (sets == om.BACKGROUND).sum() == 964 and (sets == om.EVALUATION).sum() == 659
    alphabets = {s: {a for a, t in zip(arrays.alphabets, arrays.sets) if t == s} for s in om.SETS}
    assert len(alphabets[om.BACKGROUND]) == 30 and len(alphabets[om.EVALUATION]) == 20


def test_pixels_are_bright_strokes_on_black(decoded, data_dir):
    cache, _, _ = decoded
    data = om.load_omniglot("lake", "test", rotations=False, data_dir=data_dir, cache_dir=cache)
    assert data.x.dtype == torch.float32 and data.x.shape == (659 * 20, 1, 28, 28)
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert float(data.x.mean()) < 0.2  # mostly background: strokes are the bright foreground
    border = torch.cat([data.x[..., 0, :], data.x[..., -1, :], data.x[..., :, 0], data.x[..., :, -1]], -1)
    assert float(border.mean()) < 0.02  # the page around the character is dark
    assert data.class_names[0] == "Angelic/character01" and data.augmentation is None


def test_cold_decode_wrote_one_cache_file(decoded):
    cache, _, cold = decoded
    files = sorted(p.name for p in (cache / "omniglot").iterdir())
    assert len(files) == 1 and files[0].startswith("omniglot-28px-") and files[0].endswith(".npz")
    assert cold < 60, f"cold decode took {cold:.1f} s"
    with np.load(cache / "omniglot" / files[0], allow_pickle=False) as npz:
        assert sorted(npz.files) == ["alphabets", "characters", "images", "labels", "sets"]
        assert npz["images"].shape == (32_460, 28, 28)


def test_cache_round_trip_is_equal_and_fast(decoded, data_dir):
    cache, arrays, _ = decoded
    start = time.perf_counter()
    again = om.decode_omniglot(data_dir, cache)
    data = om.load_omniglot("vinyals", "train", data_dir=data_dir, cache_dir=cache)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"cached load took {elapsed:.2f} s"
    assert np.array_equal(again.images, arrays.images) and np.array_equal(again.labels, arrays.labels)
    assert again.class_names == arrays.class_names and again.sets == arrays.sets
    first = om.load_omniglot("vinyals", "train", data_dir=data_dir, cache_dir=cache)
    assert torch.equal(first.x, data.x) and first.class_names == data.class_names


def test_cache_key_follows_size_and_sources(decoded, data_dir, tmp_path):
    cache, arrays, _ = decoded
    small = om.decode_omniglot(data_dir, cache, image_size=14)
    assert small.images.shape == (32_460, 14, 14) and small.path != arrays.path
    assert np.array_equal(small.labels, arrays.labels)
    assert arrays.path.is_file() and small.path.is_file()  # other sizes are kept
    # A copy with the same names, sizes and mtimes shares the cache; touching an archive makes it stale.
    copy = tmp_path / "data" / "omniglot"
    copy.mkdir(parents=True)
    for name in om.SETS:
        shutil.copy2(data_dir / "omniglot" / f"{name}.zip", copy / f"{name}.zip")
    assert "cache (28px): " + str(arrays.path) + ": present" in om.verify_report(copy.parent, cache)
    os.utime(copy / f"{om.EVALUATION}.zip", ns=(0, 10**18))
    report = om.verify_report(copy.parent, cache)
    assert f"stale ({arrays.path.name} was built from other sources)" in report
    assert str(arrays.path) not in report


def test_unreadable_cache_is_rebuilt_and_stale_ones_removed(decoded, data_dir, tmp_path, monkeypatch, caplog):
    _, arrays, _ = decoded
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / arrays.path.name).write_bytes(b"not an npz")  # same sources and size: same file name
    (folder / "omniglot-28px-0123456789abcdef.npz").write_bytes(b"from an older copy")
    monkeypatch.setattr(om, "_decode", lambda sources, found, size, path: arrays._replace(path=path))
    with caplog.at_level(logging.WARNING, logger="fastadapt.data"):
        rebuilt = om.decode_omniglot(data_dir, tmp_path)
    assert "is unreadable" in caplog.text and rebuilt.path == folder / arrays.path.name
    assert listing(folder) == [arrays.path.name]  # stale cache gone, no temporary file left
    assert np.array_equal(om.decode_omniglot(data_dir, tmp_path).images, arrays.images)


def test_bad_image_size_is_refused(tmp_path):
    for size in (0, 106, 28.0, True):  # checked before looking for any data
        with pytest.raises(ValueError, match="image_size must be an int in \\[1, 105\\]"):
            om.decode_omniglot(tmp_path, tmp_path, image_size=size)  # type: ignore[arg-type]


# --- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split, sizes",
    [
        ("vinyals", {"train": 1028, "val": 172, "test": 423}),
        ("maml", {"train": 1100, "val": 100, "test": 423}),
        ("lake", {"train": 964, "test": 659}),
    ],
)
def test_split_sizes_and_disjointness(decoded, split, sizes):
    _, arrays, _ = decoded
    parts = {p: om.split_classes(split, p, arrays.class_names, arrays.sets) for p in om.SPLITS[split]}
    assert {p: len(c) for p, c in parts.items()} == sizes
    assert all(c == sorted(set(c)) for c in parts.values())
    union = set().union(*parts.values())
    assert len(union) == sum(sizes.values()) == 1_623  # disjoint and complete


def test_vinyals_alphabets(decoded):
    _, arrays, _ = decoded
    alphabet_of = dict(zip(arrays.class_names, arrays.alphabets))
    parts = {p: om.split_classes("vinyals", p, arrays.class_names, arrays.sets) for p in om.SPLITS["vinyals"]}
    test_names = [arrays.class_names[i] for i in parts["test"]]
    assert {alphabet_of[n] for n in test_names} == VINYALS_TEST_ALPHABETS
    assert {arrays.sets[i] for i in parts["test"]} == {om.EVALUATION}
    gurmukhi = [n for n in test_names if n.startswith("Gurmukhi/")]
    assert gurmukhi == [f"Gurmukhi/character{i}" for i in range(42, 46)]
    assert {arrays.alphabets[i] for i in parts["val"]} == VINYALS_VAL_ALPHABETS
    assert {arrays.sets[i] for i in parts["val"]} == {om.BACKGROUND}


def test_maml_split_is_a_fixed_shuffle(decoded):
    _, arrays, _ = decoded
    train = om.split_classes("maml", "train", arrays.class_names, arrays.sets)
    assert train == om.split_classes("maml", "train", list(arrays.class_names), list(arrays.sets))
    assert train != list(range(1100))  # shuffled, not the first names
    test_sets = {arrays.sets[i] for i in om.split_classes("maml", "test", arrays.class_names, arrays.sets)}
    assert test_sets == {om.BACKGROUND, om.EVALUATION}  # drawn from all 1,623 characters
    # The permutation depends on the names, not on the order they are listed in.
    order = np.random.default_rng(0).permutation(1_623)
    names, sets = [arrays.class_names[i] for i in order], [arrays.sets[i] for i in order]
    shuffled = om.split_classes("maml", "train", names, sets)
    assert sorted(names[i] for i in shuffled) == [arrays.class_names[i] for i in train]


def test_split_errors(decoded):
    _, arrays, _ = decoded
    with pytest.raises(ValueError, match="has no partition 'val'; available: train, test"):
        om.split_classes("lake", "val", arrays.class_names, arrays.sets)
    with pytest.raises(ValueError, match="did you mean 'vinyals'"):
        om.split_classes("vinyal", "train", arrays.class_names, arrays.sets)
    with pytest.raises(ValueError, match="needs all 1623"):
        om.split_classes("maml", "train", arrays.class_names[:10], arrays.sets[:10])


def test_partition_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="available: train, test"):
        om.load_omniglot("lake", "val", data_dir=tmp_path, cache_dir=tmp_path)  # no data needed to fail


def test_rotations_give_four_classes_per_character(decoded, data_dir):
    cache, _, _ = decoded
    plain = om.load_omniglot("vinyals", "val", rotations=False, data_dir=data_dir, cache_dir=cache)
    rotated = om.load_omniglot("vinyals", "val", rotations=True, data_dir=data_dir, cache_dir=cache)
    assert plain.num_classes == plain.num_base_classes == 172
    assert rotated.num_classes == 4 * 172 and rotated.num_base_classes == 172
    assert torch.equal(plain.x, rotated.x) and rotated.class_name(1) == f"{plain.class_names[0]}/rot90x1"
    table = rotated.augmented.view(-1, 4, 1, 28, 28)
    assert torch.equal(table[0, 1], torch.rot90(plain.x[0], 1, dims=(-2, -1)))


# --- local copies, notices and errors ----------------------------------------------------------


def test_unofficial_copy_is_accepted_with_one_notice(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="fastadapt.data"):
        members = om.locate_omniglot(data_dir)
    assert {n: len(m) for n, m in members.items()} == {om.BACKGROUND: 19_280, om.EVALUATION: 13_180}
    notices = [r for r in caplog.records if r.name == "fastadapt.data"]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING
    message = notices[0].getMessage()
    assert "\n" not in message and "not the official release" in message and "structure checks out" in message
    for name in om.SETS:
        archive = data_dir / "omniglot" / f"{name}.zip"
        assert file_hash(archive, "md5") in message and om.OFFICIAL_MD5[name] in message


def test_official_copy_gets_no_notice(data_dir, caplog, monkeypatch):
    actual = {n: file_hash(data_dir / "omniglot" / f"{n}.zip", "md5") for n in om.SETS}
    monkeypatch.setattr(om, "OFFICIAL_MD5", actual)  # pretend this copy is the official one
    with caplog.at_level(logging.WARNING, logger="fastadapt.data"):
        om.locate_omniglot(data_dir)
    assert not [r for r in caplog.records if r.name == "fastadapt.data"]


def test_extracted_folders_are_accepted_and_decode_like_archives(tmp_path, caplog, monkeypatch):
    # A small copy stands in for the real one (13,180 extracted files take a minute to delete here).
    monkeypatch.setattr(om, "EXPECTED", {om.BACKGROUND: (3, 6), om.EVALUATION: (3, 6)})
    monkeypatch.setattr(om, "IMAGES_PER_CHARACTER", 4)
    folders = fake_copy(tmp_path / "folders", alphabets=3, characters=2, images=4, folders=True)
    archives = fake_copy(tmp_path / "archives", alphabets=3, characters=2, images=4)
    with caplog.at_level(logging.WARNING, logger="fastadapt.data"):
        members = om.locate_omniglot(folders)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "images_background/ (folder, no checksum), images_evaluation/ (folder, no checksum)" in message
    assert members == om.locate_omniglot(archives)
    from_folders = om.decode_omniglot(folders, tmp_path / "cache")
    report = om.verify_report(folders, tmp_path / "cache")
    assert f"{folders / 'omniglot' / om.EVALUATION} (extracted folder)" in report and "md5: n/a" in report
    assert f"{from_folders.path}: present" in report and "usable: yes" in report
    from_archives = om.decode_omniglot(archives, tmp_path / "cache")
    assert from_folders.path != from_archives.path  # other sources, other key; one cache per size is kept
    assert "was built from other sources" in om.verify_report(folders, tmp_path / "cache")
    assert from_folders.images.shape == (48, 28, 28)
    assert np.array_equal(from_folders.images, from_archives.images)
    assert from_folders.class_names == from_archives.class_names
    assert from_folders.class_names[0] == "background0/character01"
    assert np.array_equal(from_folders.labels, np.repeat(np.arange(12), 4))
    ink = from_folders.images.reshape(12, 4, -1).astype(float).mean(-1)  # bright ink grows with the square
    assert np.all(np.diff(ink, axis=1) > 0) and float(from_folders.images[0, -1, -1]) == 0


def test_wrong_structure_is_refused(tmp_path):
    root = fake_copy(tmp_path / "data", alphabets=2, characters=1, images=3)
    with pytest.raises(ValueError) as info:
        om.load_omniglot(data_dir=root, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "not usable" in message and "2 alphabets (expected 30)" in message
    assert "2 characters (expected 964)" in message and "2 characters without 20 images" in message
    assert "2 alphabets (expected 20)" in message and "fastadapt data omniglot --download" in message
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing cached
    report = om.verify_report(root, tmp_path / "cache")
    assert "usable: no" in report and "2 alphabets (expected 30)" in report


def test_corrupt_archive_is_refused(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    for name in om.SETS:
        (folder / f"{name}.zip").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a valid zip archive"):
        om.locate_omniglot(tmp_path)
    assert "unreadable" in om.verify_report(tmp_path, tmp_path)


def test_missing_data_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        om.load_omniglot(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path / "omniglot") in message
    assert "images_background.zip or images_background/" in message and "images_evaluation.zip" in message
    assert "fastadapt data omniglot --download" in message and "--data-dir" in message
    assert "FASTADAPT_DATA" in message and "from argument" in message
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match=r"from \$FASTADAPT_DATA"):
        om.load_omniglot(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "env").exists() and not (tmp_path / "cache").exists()


def test_verify_report(decoded, data_dir, tmp_path):
    cache, arrays, _ = decoded
    report = om.verify_report(data_dir, cache)
    assert f"data dir: {data_dir}" in report
    assert "30 alphabets, 964 characters, 19,280 images" in report
    assert "20 alphabets, 659 characters, 13,180 images" in report
    for name in om.SETS:
        archive = data_dir / "omniglot" / f"{name}.zip"
        assert f"{archive} (archive, {archive.stat().st_size:,} bytes)" in report
        assert f"md5: {file_hash(archive, 'md5')} (NOT the official {om.OFFICIAL_MD5[name]})" in report
    assert "usable: yes" in report and f"cache dir: {cache}" in report
    assert f"{arrays.path}: present (" in report and "MiB)" in report
    assert ": absent" in om.verify_report(data_dir, tmp_path / "empty-cache")
    missing = om.verify_report(tmp_path, tmp_path)
    assert "images_background: MISSING" in missing and "usable: no" in missing


# --- downloading (local server only) ----------------------------------------------------------


def test_download_verifies_the_official_md5(http_server, tmp_path):
    for name in om.SETS:
        http_server.add(f"/omniglot/{name}.zip", b"not the omniglot archive")
    with pytest.raises(ChecksumError) as info:
        om.download_omniglot(tmp_path, base_url=f"{http_server.base_url}/omniglot")
    assert om.OFFICIAL_MD5[om.BACKGROUND] in str(info.value)
    assert list((tmp_path / "omniglot").iterdir()) == []  # nothing half-written


def test_download_fetches_then_keeps_verified_archives(http_server, data_dir, tmp_path, monkeypatch):
    served = {n: (data_dir / "omniglot" / f"{n}.zip").read_bytes() for n in om.SETS}
    for name, body in served.items():
        http_server.add(f"/{name}.zip", body)
    actual = {n: file_hash(data_dir / "omniglot" / f"{n}.zip", "md5") for n in om.SETS}
    monkeypatch.setattr(om, "OFFICIAL_MD5", actual)  # pretend this copy is the official one
    folder = om.download_omniglot(tmp_path, base_url=http_server.base_url + "/")
    assert folder == tmp_path / "omniglot"
    assert {p.name for p in folder.iterdir()} == {f"{n}.zip" for n in om.SETS}
    assert all((folder / f"{n}.zip").read_bytes() == body for n, body in served.items())
    om.download_omniglot(tmp_path, base_url=http_server.base_url)  # already verified: no new request
    assert all(http_server.hits[f"/{n}.zip"] == 1 for n in om.SETS)


def test_load_with_download_uses_the_configured_url(http_server, tmp_path, monkeypatch):
    monkeypatch.setattr(om, "OFFICIAL_URL", http_server.base_url)
    for name in om.SETS:
        http_server.add(f"/{name}.zip", b"corrupt")
    with pytest.raises(ChecksumError):
        om.load_omniglot(data_dir=tmp_path, cache_dir=tmp_path / "cache", download=True)
    assert http_server.hits[f"/{om.BACKGROUND}.zip"] == 1
    assert list((tmp_path / "omniglot").iterdir()) == []
