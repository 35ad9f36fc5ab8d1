"""fastadapt's compiled C++ extension: the double-backward kernels, the tensor pool and other kernels.

One library built from ``fastadapt/csrc`` (``double_backward.cpp``, the convolution and BatchNorm
of ``fastadapt.double_backward``; ``tensor_pool.cpp``, the CPU allocator of
``fastadapt.tensor_pool``; ``compact_activations.cpp``, ``fastadapt.compact_activations``;
``fused_update.cpp``, Reptile's ``fused_update``). It is compiled on first use with ``torch.utils.cpp_extension``
(a C++ compiler and ``ninja``: ``pip install fastadapt[kernels]``; ~35 s on the project's 2-core
VM, cached by torch afterwards).

Once built, later processes load the cached library directly when a stamp written beside torch's
extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) matches the
sources, torch build, Python and flags: importing ``torch.utils.cpp_extension`` (it pulls in
setuptools) and its version check cost ~4 MB of resident memory and ~0.08 s (0.095 vs 0.015 s to
load, ad hoc), which every second-order MAML process paid.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = [
    CSRC / "double_backward.cpp", CSRC / "tensor_pool.cpp", CSRC / "compact_activations.cpp", CSRC / "fused_update.cpp",
]
HEADERS = [
    CSRC / "tensor_pool.h", CSRC / "compact_activations.h", CSRC / "conv_config.h", CSRC / "fused_update.h",
    CSRC / "vector_clones.h",
]
NAME = "fastadapt_double_backward"
CFLAGS = ["-O3", "-fno-math-errno"]  # sqrt inlined and vectorised (fused_update.cpp); no code reads errno
_lock = threading.Lock()
_module: ModuleType | None = None
_error: RuntimeError | None = None  # why it could not be built: not retried within the process


def stamp_path() -> Path:
    """Where the stamp of the last build is kept: beside torch's extension cache."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return (Path(root) if root else cache) / f"{NAME}.stamp.json"


def build_key() -> dict[str, Any]:
    """What a built library must match to be loaded without ``torch.utils.cpp_extension``."""
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"source_sha256": digest.hexdigest(), "torch": torch.__version__,
            "torch_git": torch.version.git_version, "python": sys.version, "cflags": CFLAGS}


def _file_id(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _load_built() -> ModuleType | None:
    """The library of an earlier build whose stamp matches ``build_key()`` (and is unchanged since), else None."""
    try:
        stamp = json.loads(stamp_path().read_text())
        library = Path(stamp["library"])
        if stamp["key"] != build_key() or stamp["file"] != _file_id(library):
            return None
        # torch's loader renames a rebuilt extension (``NAME_v1``, ...): its init symbol has that name.
        spec = importlib.util.spec_from_file_location(stamp["module"], library)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None


def _write_stamp(module: ModuleType) -> None:
    """Record the library ``module`` was loaded from (atomically; a cache that cannot be written is skipped)."""
    try:
        library = Path(str(module.__file__))
        path = stamp_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        stamp = {"key": build_key(), "module": module.__name__, "library": str(library), "file": _file_id(library)}
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, path)
    except OSError as error:
        log.debug("could not write %s: %s", stamp_path(), error)


def load_extension() -> ModuleType:
    """The compiled extension: the cached library when its stamp matches (module docstring), else
    built or loaded by ``torch.utils.cpp_extension.load`` (which then stamps it).

    Raises ``RuntimeError`` naming what is missing when it cannot be built (the same error again on
    later calls in this process, without another attempt).
    """
    global _module, _error
    with _lock:
        if _error is not None:
            raise _error
        if _module is None:
            _module = _load_built()
        if _module is None:
            from torch.utils.cpp_extension import load, verify_ninja_availability

            try:
                verify_ninja_availability()
            except RuntimeError as error:
                _error = RuntimeError(
                    "fastadapt's C++ extension (second_order_kernels, the tensor pool) needs ninja to compile: "
                    "pip install 'fastadapt[kernels]'"
                )
                raise _error from error
            log.info("compiling fastadapt's C++ extension (once; cached by torch.utils.cpp_extension)")
            try:
                _module = load(NAME, [str(p) for p in SOURCES], extra_cflags=CFLAGS, extra_include_paths=[str(CSRC)])
            except (RuntimeError, OSError) as error:
                _error = RuntimeError(f"could not compile {[p.name for p in SOURCES]} in {CSRC} (needs a C++ compiler): {error}")
                raise _error from error
            _write_stamp(_module)
    return _module


def loaded_extension() -> ModuleType | None:
    """The extension if this process has loaded it already, else None (never builds)."""
    return _module


def extension_available() -> bool:
    """Whether ``load_extension`` succeeds here (compiles on first call)."""
    try:
        load_extension()
    except RuntimeError:
        return False
    return True
