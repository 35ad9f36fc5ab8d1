"""Dataset-independent file handling: download, hash, atomic write, zip extraction and reading.

Standard library only (``urllib``). ``download_file`` streams to a temporary file beside the
destination and checks the size against ``Content-Length`` and the checksum(s) *before* renaming
it into place, so a failed, partial or corrupt download raises and leaves nothing behind.
``safe_extract_zip`` refuses archives whose entries would land outside the target (absolute
paths, ``..``, symbolic links) and extracts into a temporary folder renamed into place only when
complete. ``FileTree`` reads one folder tree alike from a zip archive (in place, not extracted)
or from an extracted folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO

logger = logging.getLogger("fastadapt.data")

_HEX_LENGTH = {"md5": 32, "sha256": 64}
_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")


class DownloadError(OSError):
    """A download failed, was cut short, or has the wrong size."""


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the expected checksum."""


class UnsafeArchiveError(ValueError):
    """An archive entry would be written outside the extraction target."""


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Lower-case hex digest of a file, read in 1 MiB chunks.

    Args:
        path: the file.
        algorithm: any name ``hashlib.new`` accepts (``"md5"``, ``"sha256"``, ...).
    """
    if algorithm not in hashlib.algorithms_available:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; try 'md5' or 'sha256'")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_write(dest: str | Path) -> Iterator[BinaryIO]:
    """Write a file all at once or not at all.

    Yields a binary file open on a hidden temporary file beside ``dest`` (its
    folder is created if needed). When the block exits normally the file is
    flushed, fsynced and renamed to ``dest``, replacing any existing file; when
    it raises, the temporary file is deleted and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0o600 would hide shared caches from other users
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _expected_hashes(md5: str | None, sha256: str | None) -> dict[str, str]:
    expected = {}
    for name, value in (("md5", md5), ("sha256", sha256)):
        if value is None:
            continue
        value = value.strip().lower()
        if len(value) != _HEX_LENGTH[name] or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{name} must be {_HEX_LENGTH[name]} hex digits, got {value!r}")
        expected[name] = value
    return expected


def download_file(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying size and checksums first.

    The body is streamed to a hidden temporary file in ``dest``'s folder; only
    when the byte count matches ``Content-Length`` (where the server sent one)
    and every given checksum matches is it renamed to ``dest`` (replacing any
    existing file). On any failure the temporary file is removed.

    Args:
        url: ``http(s)://`` (or ``file://``) address.
        dest: destination file; its folder is created if needed.
        md5: expected md5 hex digest, or ``None``.
        sha256: expected sha256 hex digest, or ``None``.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DownloadError: network/HTTP failure, or fewer/more bytes than announced.
        ChecksumError: the bytes do not match ``md5``/``sha256``.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (use {', '.join(_SCHEMES)})")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    expected = _expected_hashes(md5, sha256)
    dest = Path(dest)
    with atomic_write(dest) as out:
        size, announced, actual = _stream(url, out, timeout, list(expected))
        if announced is not None and size != announced:
            raise DownloadError(
                f"download of {url} is incomplete: got {size:,} bytes, the server announced "
                f"{announced:,} (Content-Length); nothing was written to {dest}"
            )
        for name, value in expected.items():
            if actual[name] != value:
                raise ChecksumError(
                    f"checksum mismatch for {url}: expected {name} {value}, got {actual[name]} "
                    f"({size:,} bytes); the file is corrupt or not the expected one, "
                    f"nothing was written to {dest}"
                )
    logger.info("downloaded %s -> %s", url, dest)
    return dest


def _stream(
    url: str, out: BinaryIO, timeout: float, algorithms: list[str]
) -> tuple[int, int | None, dict[str, str]]:
    """Copy the body of ``url`` into ``out``; return (bytes, Content-Length or None, digests)."""
    digests = {name: hashlib.new(name) for name in algorithms}
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length is not None and length.isdigit() else None
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, HTTPException, TimeoutError, ConnectionError) as err:
        raise DownloadError(f"download of {url} failed after {size:,} bytes: {err}") from err
    return size, announced, {name: d.hexdigest() for name, d in digests.items()}


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """The entry's relative path, or raise if it could escape the target."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"{archive} holds a symbolic link {info.filename!r}; refusing to extract")
    drive = len(name) > 1 and name[1] == ":"
    if path.is_absolute() or drive or ".." in path.parts or "\x00" in name or not path.parts:
        raise UnsafeArchiveError(
            f"{archive} holds an entry {info.filename!r} that would be written outside the "
            "target folder (absolute path or '..'); refusing to extract"
        )
    return path


def safe_extract_zip(archive: str | Path, target: str | Path) -> Path:
    """Extract a zip archive into the new folder ``target``, refusing unsafe entries.

    Every entry is checked before anything is written: absolute paths, drive
    letters, ``..`` components and symbolic links are refused. The archive is
    extracted into a temporary folder beside ``target`` and renamed to
    ``target`` once complete (CRCs checked), so ``target`` either does not
    exist or holds the whole archive.

    Args:
        archive: the ``.zip`` file.
        target: folder to create; must not exist yet.

    Returns:
        ``target`` as a ``Path``.

    Raises:
        UnsafeArchiveError: an entry would escape ``target``.
        FileExistsError: ``target`` already exists.
        ValueError: ``archive`` is not a valid zip file.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise FileExistsError(f"extraction target {target} already exists; remove it or pick another folder")
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a valid zip archive: {err}") from err
    with zf:
        members = [(info, _check_member(info, archive)) for info in zf.infolist()]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
        try:
            for info, rel in members:
                out = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            os.replace(tmp, target)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{archive} is corrupt: {err}") from err
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return target


@dataclass(frozen=True)
class FileTree:
    """A folder tree stored as a zip archive or as an extracted folder, read alike.

    Attributes:
        path: the ``.zip`` file, or the folder itself.
        top: for an archive, the folder inside it that holds the tree (``""`` for its root).
    """

    path: Path
    top: str = ""

    @property
    def is_archive(self) -> bool:
        return self.path.suffix.lower() == ".zip"

    def describe(self) -> str:
        """``'name.zip'`` or ``'name/'``."""
        return self.path.name if self.is_archive else f"{self.path.name}/"

    def files(self, suffix: str, depth: int) -> list[tuple[str, ...]]:
        """Sorted relative paths (as parts) of the files named ``*suffix`` exactly ``depth`` levels down.

        Raises:
            ValueError: the archive is not a valid zip file.
        """
        suffix = suffix.lower()
        if not self.is_archive:
            found = self.path.glob("/".join(["*"] * depth))
            wanted = (p for p in found if p.name.lower().endswith(suffix) and p.is_file())
            return sorted(p.relative_to(self.path).parts for p in wanted)
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as err:
            raise ValueError(f"{self.path} is not a valid zip archive: {err}") from err
        top = [self.top] if self.top else []
        parts = (n.split("/") for n in names if n.lower().endswith(suffix))
        inside = (p for p in parts if len(p) == len(top) + depth and p[: len(top)] == top)
        return sorted(tuple(p[len(top) :]) for p in inside)

    def fingerprint(self, suffix: str, depth: int) -> str:
        """Cheap identity of the bytes: name, size and mtime of the archive, or of every file."""
        if self.is_archive:
            st = self.path.stat()
            return f"{self.path.name}:{st.st_size}:{st.st_mtime_ns}"
        digest = hashlib.sha256()
        for parts in self.files(suffix, depth):
            st = self.path.joinpath(*parts).stat()
            digest.update(f"{'/'.join(parts)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"{self.describe()}:{digest.hexdigest()}"

    def reader(self, stack: ExitStack) -> Callable[[tuple[str, ...]], bytes]:
        """A function reading a file's bytes by its parts; an archive stays open until ``stack`` closes."""
        if not self.is_archive:
            return lambda parts: self.path.joinpath(*parts).read_bytes()
        zf = stack.enter_context(zipfile.ZipFile(self.path))
        top = f"{self.top}/" if self.top else ""
        return lambda parts: zf.read(top + "/".join(parts))
