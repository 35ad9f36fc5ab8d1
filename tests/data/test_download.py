"""Downloads against a local HTTP server, checksums, atomic writes, safe extraction, settings."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from fastadapt.data import settings
from fastadapt.data.download import (
    ChecksumError,
    DownloadError,
    FileTree,
    UnsafeArchiveError,
    atomic_write,
    download_file,
    file_hash,
    safe_extract_zip,
)


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


GOOD = make_zip({"top/a/one.txt": b"1" * 1000, "top/a/two.txt": b"22", "top/b/three.txt": b"333"})


def listing(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden temporary files included."""
    return sorted(os.listdir(folder))


# --- download_file ----------------------------------------------------------------------------


def test_good_archive_downloads_and_verifies(http_server, tmp_path):
    url = http_server.add("/good.zip", GOOD)
    dest = tmp_path / "sub" / "good.zip"
    out = download_file(
        url, dest, md5=hashlib.md5(GOOD).hexdigest(), sha256=hashlib.sha256(GOOD).hexdigest().upper()
    )
    assert out == dest and dest.read_bytes() == GOOD
    assert listing(dest.parent) == ["good.zip"]  # no temporary file left behind


def test_wrong_checksum_raises_and_leaves_nothing(http_server, tmp_path):
    url = http_server.add("/good.zip", GOOD)
    wrong = hashlib.md5(b"something else").hexdigest()
    with pytest.raises(ChecksumError) as info:
        download_file(url, tmp_path / "good.zip", md5=wrong)
    message = str(info.value)
    assert url in message and wrong in message and hashlib.md5(GOOD).hexdigest() in message
    assert listing(tmp_path) == []


def test_wrong_sha256_raises(http_server, tmp_path):
    url = http_server.add("/good.zip", GOOD)
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(url, tmp_path / "good.zip", sha256="0" * 64)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("checksum", [True, False])
def test_truncated_body_raises_and_leaves_nothing(http_server, tmp_path, checksum):
    # The server announces more bytes than it sends, then closes the connection.
    url = http_server.add("/cut.zip", GOOD[:500], content_length=len(GOOD))
    md5 = hashlib.md5(GOOD).hexdigest() if checksum else None
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "cut.zip", md5=md5)
    message = str(info.value)
    assert "incomplete" in message and url in message and f"{len(GOOD):,}" in message and "500" in message
    assert listing(tmp_path) == []


def test_cut_off_body_without_length_fails_the_checksum(http_server, tmp_path):
    url = http_server.add("/cut.zip", GOOD[:500], content_length=-1)
    with pytest.raises(ChecksumError):
        download_file(url, tmp_path / "cut.zip", sha256=hashlib.sha256(GOOD).hexdigest())
    assert listing(tmp_path) == []


def test_failed_download_keeps_the_existing_file(http_server, tmp_path):
    dest = tmp_path / "data.zip"
    dest.write_bytes(b"previous")
    url = http_server.add("/data.zip", GOOD)
    with pytest.raises(ChecksumError):
        download_file(url, dest, md5="0" * 32)
    assert dest.read_bytes() == b"previous" and listing(tmp_path) == ["data.zip"]


def test_http_error_names_url_and_status(http_server, tmp_path):
    url = f"{http_server.base_url}/missing.zip"
    with pytest.raises(DownloadError, match="404") as info:
        download_file(url, tmp_path / "missing.zip")
    assert url in str(info.value) and listing(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"url": "ftp://example.org/x.zip"}, "scheme"),
        ({"md5": "xyz"}, "md5 must be 32 hex digits"),
        ({"sha256": "ab" * 31}, "sha256 must be 64 hex digits"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_arguments_fail_early(http_server, tmp_path, kwargs, match):
    args = {"url": http_server.add("/good.zip", GOOD), "dest": tmp_path / "x.zip", **kwargs}
    with pytest.raises(ValueError, match=match):
        download_file(**args)
    assert http_server.hits["/good.zip"] == 0


def test_file_hash(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(GOOD)
    assert file_hash(path, "md5") == hashlib.md5(GOOD).hexdigest()
    assert file_hash(path) == hashlib.sha256(GOOD).hexdigest()
    with pytest.raises(ValueError, match="unknown hash algorithm 'md6'"):
        file_hash(path, "md6")


def test_atomic_write_is_all_or_nothing(tmp_path):
    dest = tmp_path / "out.bin"
    with atomic_write(dest) as f:
        f.write(b"complete")
    assert dest.read_bytes() == b"complete"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(dest) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert dest.read_bytes() == b"complete" and listing(tmp_path) == ["out.bin"]


# --- safe_extract_zip -------------------------------------------------------------------------


def test_safe_extract(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(GOOD)
    target = safe_extract_zip(archive, tmp_path / "out")
    assert (target / "top" / "a" / "one.txt").read_bytes() == b"1" * 1000
    assert (target / "top" / "b" / "three.txt").read_bytes() == b"333"
    assert listing(tmp_path) == ["good.zip", "out"]
    with pytest.raises(FileExistsError, match="already exists"):
        safe_extract_zip(archive, target)


ESCAPES = ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt", "C:/evil.txt", "..\\evil.txt"]


@pytest.mark.parametrize("name", ESCAPES)
def test_zip_slip_is_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(make_zip({"fine.txt": b"ok", name: b"evil"}))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchiveError, match="outside the target") as info:
        safe_extract_zip(archive, work / "out")
    assert repr(name) in str(info.value)
    assert listing(work) == [] and not (tmp_path / "evil.txt").exists()


def test_symlink_entry_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    archive = tmp_path / "link.zip"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert listing(tmp_path) == ["link.zip"]


def test_not_a_zip_is_refused(tmp_path):
    archive = tmp_path / "junk.zip"
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a valid zip"):
        safe_extract_zip(archive, tmp_path / "out")


# --- FileTree ---------------------------------------------------------------------------------


def test_file_tree_reads_archive_and_folder_alike(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(GOOD)
    folder = safe_extract_zip(archive, tmp_path / "out") / "top"
    zipped, extracted = FileTree(archive, top="top"), FileTree(folder)
    assert zipped.is_archive and not extracted.is_archive
    assert zipped.describe() == "good.zip" and extracted.describe() == "top/"
    files = [("a", "one.txt"), ("a", "two.txt"), ("b", "three.txt")]
    assert zipped.files(".txt", 2) == extracted.files(".TXT", 2) == files
    assert zipped.files(".txt", 1) == []
    from contextlib import ExitStack

    with ExitStack() as stack:
        read_zip, read_dir = zipped.reader(stack), extracted.reader(stack)
        assert all(read_zip(f) == read_dir(f) for f in files)


def test_file_tree_fingerprint_follows_the_files(tmp_path):
    archive = tmp_path / "good.zip"
    archive.write_bytes(GOOD)
    folder = safe_extract_zip(archive, tmp_path / "out") / "top"
    before = FileTree(archive).fingerprint(".txt", 2), FileTree(folder).fingerprint(".txt", 2)
    assert before == (FileTree(archive).fingerprint(".txt", 2), FileTree(folder).fingerprint(".txt", 2))
    os.utime(archive, ns=(0, 10**18))
    (folder / "a" / "two.txt").write_bytes(b"changed")
    after = FileTree(archive).fingerprint(".txt", 2), FileTree(folder).fingerprint(".txt", 2)
    assert before[0] != after[0] and before[1] != after[1]


# --- settings ---------------------------------------------------------------------------------


def test_directory_settings(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.DATA_ENV, raising=False)
    monkeypatch.delenv(settings.CACHE_ENV, raising=False)
    assert settings.data_dir() == Path.home() / ".cache" / "fastadapt" / "data"
    assert settings.cache_dir() == Path.home() / ".cache" / "fastadapt" / "cache"
    assert settings.describe_source(None, settings.DATA_ENV) == "default"
    monkeypatch.setenv(settings.DATA_ENV, str(tmp_path / "d"))
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "c"))
    assert settings.data_dir() == tmp_path / "d" and settings.cache_dir() == tmp_path / "c"
    assert settings.describe_source(None, settings.DATA_ENV) == "$FASTADAPT_DATA"
    assert settings.data_dir(tmp_path / "x") == tmp_path / "x"  # the argument wins
    assert settings.cache_dir(str(tmp_path / "y")) == tmp_path / "y"
    monkeypatch.setenv(settings.DATA_ENV, "")  # empty counts as unset
    assert settings.data_dir() == Path.home() / ".cache" / "fastadapt" / "data"
    assert not (tmp_path / "d").exists()  # resolving never creates anything
    with pytest.raises(ValueError, match="non-empty path"):
        settings.data_dir("")
