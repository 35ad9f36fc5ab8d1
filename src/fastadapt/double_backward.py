"""Convolution and BatchNorm with an explicit, compiled double backward (second-order MAML).

Second-order MAML differentiates the inner loop's backward pass: every convolution and
BatchNorm of a support pass gets a *double backward*. PyTorch's generic ones are slow on
the small per-task batches of few-shot learning: a strided convolution's weight-gradient
term is computed as a convolution of the transposed input with the transposed output
gradient (a dilated convolution with a large kernel), and BatchNorm's as some thirty
element-wise passes. ``explicit_double_backward()`` is a ``torch.overrides.TorchFunctionMode``
under which ``F.conv1d/2d/3d`` and training-mode ``F.batch_norm`` run as autograd functions
from ``fastadapt/csrc/double_backward.cpp`` whose backward is itself a node with a
hand-written backward:

* convolution ``y = conv(x, w) + b``; for upstream gradients ``(ggx, ggw, ggb)`` of the
  backward's outputs ``(gx, gw, gb)``: ``d/dgy = conv(ggx, w) + conv(x, ggw) + ggb``,
  ``d/dw = conv_weight_grad(gy, ggx)``, ``d/dx = conv_input_grad(gy, ggw)`` (ordinary
  forward/backward convolutions);
* BatchNorm with batch statistics, per channel over its ``M`` elements, ``s = 1/sqrt(var + eps)``,
  ``xh = (x - mean) s``, ``P v = v - mean(v) - xh mean(v xh)`` (the backward is
  ``gx = w s P g``, ``gw = sum(g xh)``, ``gb = sum(g)``; ``P`` is symmetric and
  ``d xh / dx = s P``, ``d s / dx = -s^2 xh / M``). For upstream ``(u, a, b)`` of ``(gx, gw, gb)``::

      d/dg = w s P u + a xh + b
      d/dw = s C,   C = sum(u g) - sum(u) sum(g) / M - sum(u xh) sum(g xh) / M
      d/dx = -w s^2 xh C / M + s P(c1 g + c2 u),
             c1 = a - w s sum(u xh) / M,   c2 = -w s sum(g xh) / M

  both linear in ``(u, g, x - mean)`` with per-channel coefficients: on contiguous float32/64
  CPU tensors two passes over the data (one for ``sum(u)``, ``sum(u xh)``, ``sum(u g)`` in
  double, one writing both results); elsewhere the same formulas as ATen operations (a fused
  batch-norm backward for ``w s P u``, one reduction, two element-wise expressions).

The functions are C++ so that the autograd engine runs them without the GIL, and their Python
bindings release it while they compute (a Python ``autograd.Function`` serialised the worker
threads of ``fastadapt.task_parallel``: on the Omniglot MAML 20-way 5-step benchmark with two
workers it gave 1.06x, ad hoc; see ``benchmarks/README.md``'s ablation table for the compiled
ones). The convolution's backward passes are differentiable ATen calls, so
its third and higher derivatives are correct; BatchNorm's double backward treats the batch
mean and ``s`` as constants and raises if differentiated again (``create_graph=True``
through a second-order meta-gradient). The extension is compiled on first
use with ``torch.utils.cpp_extension`` (a C++ compiler and ``ninja``: ``pip install
fastadapt[kernels]``; 32 s on the project's 2-core VM, cached by torch afterwards). Anything else
falls through to PyTorch: string padding, BatchNorm with running statistics in eval mode or
without affine parameters, and any call under autocast.

Once built, later processes load the cached library directly when a stamp written beside torch's
extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) matches this
source, torch build, Python and flags: importing ``torch.utils.cpp_extension`` (it pulls in
setuptools) and its version check cost ~4 MB of resident memory and ~0.08 s (0.095 vs 0.015 s to
load, ad hoc), which every second-order MAML process paid.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from fastadapt.runtime import autocast_enabled

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "double_backward.cpp"
NAME = "fastadapt_double_backward"
CFLAGS = ["-O3"]
_lock = threading.Lock()
_module: ModuleType | None = None


def stamp_path() -> Path:
    """Where the stamp of the last build is kept: beside torch's extension cache."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"
    return (Path(root) if root else cache) / f"{NAME}.stamp.json"


def build_key() -> dict[str, Any]:
    """What a built library must match to be loaded without ``torch.utils.cpp_extension``."""
    return {"source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(), "torch": torch.__version__,
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


def load_kernels() -> ModuleType:
    """The compiled extension: the cached library when its stamp matches (module docstring), else
    built or loaded by ``torch.utils.cpp_extension.load`` (which then stamps it).

    Raises ``RuntimeError`` naming what is missing when it cannot be built.
    """
    global _module
    with _lock:
        if _module is None:
            _module = _load_built()
        if _module is None:
            from torch.utils.cpp_extension import load, verify_ninja_availability

            try:
                verify_ninja_availability()
            except RuntimeError as error:
                raise RuntimeError(
                    "second_order_kernels needs ninja to compile fastadapt's C++ kernels: pip install 'fastadapt[kernels]'"
                ) from error
            log.info("compiling fastadapt's double-backward kernels (once; cached by torch.utils.cpp_extension)")
            try:
                _module = load(NAME, [str(SOURCE)], extra_cflags=CFLAGS)
            except (RuntimeError, OSError) as error:
                raise RuntimeError(f"could not compile {SOURCE} (second_order_kernels needs a C++ compiler): {error}") from error
            _write_stamp(_module)
    return _module


def kernels_available() -> bool:
    """Whether ``load_kernels`` succeeds here (compiles on first call)."""
    try:
        load_kernels()
    except RuntimeError:
        return False
    return True


def _expand(value: int | Sequence[int], dims: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims


class ExplicitDoubleBackward(TorchFunctionMode):
    """Routes convolutions and training-mode BatchNorm to the compiled functions (module docstring)."""

    def __init__(self, kernels: ModuleType) -> None:
        super().__init__()
        self.kernels = kernels
        self.handlers: dict[Callable[..., Any], Callable[..., Tensor | None]] = {
            torch.conv1d: self._conv, torch.conv2d: self._conv, torch.conv3d: self._conv, F.batch_norm: self._batch_norm,
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is not None:
            out = handler(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)

    def _conv(
        self, input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
        dilation: Any = 1, groups: int = 1,
    ) -> Tensor | None:
        dims = weight.dim() - 2
        if padding == "valid":
            padding = 0
        if isinstance(padding, str) or autocast_enabled(input.device.type):
            return None
        return self.kernels.conv(
            input, weight, bias, _expand(stride, dims), _expand(padding, dims), _expand(dilation, dims), groups
        )

    def _batch_norm(
        self, input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
        bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
    ) -> Tensor | None:
        if not training or weight is None or bias is None or autocast_enabled(input.device.type):
            return None
        return self.kernels.batch_norm(input, weight, bias, running_mean, running_var, momentum, eps)


@contextlib.contextmanager
def explicit_double_backward(enabled: bool = True) -> Iterator[None]:
    """Within the block (this thread only), convolutions and training-mode BatchNorm get the
    compiled double backward; a no-op when ``enabled`` is false."""
    if not enabled:
        yield
        return
    with ExplicitDoubleBackward(load_kernels()):
        yield
