"""Smaller saved activations for first-order backward passes: cheap convolutions recomputed, ReLU masks.

A Conv-4 pass keeps, per BatchNorm layer, the layer's input (the convolution's output) and, per
ReLU, its output, which the next convolution keeps as its input too. On 28x28 Omniglot images the
first block's maps are the network's largest (a MAML task's 75 query images: 75x64x14x14 floats,
3.6 MB each) and the first convolution the cheapest (one input channel: 9 multiply-adds per output
element, 576 for the next). Under ``compact_activations()``, a ``torch.overrides.TorchFunctionMode``:

* a training-mode ``F.batch_norm`` whose input is the output of a convolution with at most
  ``max_macs`` multiply-adds per output element (``in_channels / groups x kernel size``; 27 by
  default: a 3x3 convolution over 3 channels, the first layer of an RGB network) keeps that
  convolution's inputs, which its own node keeps anyway, instead of its output, recomputes the
  output in its backward and writes the input gradient into the recomputed tensor (per-channel
  sums from ATen, then three in-place passes: no temporary of the input's size, where ATen's
  ``native_batch_norm_backward`` allocates one);
* a ReLU keeps a one-byte mask of its clamped elements instead of its output: the next
  convolution still keeps the output as its input, but releases it in its backward, right
  before the ReLU's, so the output, its gradient and the gradient below are never alive together.

On MAML's Omniglot query pass a task's peak of saved and gradient maps drops from four maps of the
first block (plus ATen's temporary) to two (``benchmarks/README.md``, "Compact query activations"). The
kernels are fastadapt's C++ extension's (``fastadapt/csrc/compact_activations.cpp``; they run
without the GIL, so task worker threads stay parallel; with GCC on x86-64 Linux the ReLU loops are
compiled for AVX-512, AVX2 and the baseline and picked at run time, elsewhere once for the build's target). Derivatives equal the plain pass's up to rounding (the
BatchNorm input gradient is the same formula in another order; the ReLU gradient is bitwise
``threshold_backward``'s; ``tests/test_compact_activations.py``). The
BatchNorm backward is differentiable once, so this is for passes whose backward is first order
(MAML's query passes; a ``create_graph=True`` backward through it raises); the ReLU's is
differentiable to any order. The BatchNorm part does not apply under autocast, to BatchNorm in
eval mode or after convolutions with string padding; in-place ReLUs are left alone; with gradients
off nothing changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from fastadapt.double_backward import expand
from fastadapt.extension import load_extension
from fastadapt.runtime import autocast_enabled

__all__ = ["MAX_MACS", "CompactActivations", "compact_activations"]

MAX_MACS = 27
"""Default most multiply-adds per output element of a convolution whose output is recomputed."""

_CONVOLUTIONS = (torch.conv1d, torch.conv2d, torch.conv3d)
_RELUS = (F.relu, torch.relu, torch.Tensor.relu)


class _Convolution(NamedTuple):
    """How a convolution output was made (``at::convolution``'s arguments)."""

    input: Tensor
    weight: Tensor
    bias: Tensor | None
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int


class CompactActivations(TorchFunctionMode):
    """Records cheap convolutions' outputs; routes training-mode BatchNorm over them, and ReLU, to the
    compiled ``batch_norm_of_convolution`` and ``masked_relu`` (module docstring)."""

    def __init__(self, kernels: ModuleType, max_macs: int = MAX_MACS) -> None:
        super().__init__()
        self.kernels = kernels
        if isinstance(max_macs, bool) or not isinstance(max_macs, int) or max_macs < 1:
            raise ValueError(f"max_macs must be an int >= 1, got {max_macs!r}")
        self.max_macs = max_macs
        self.convolutions: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.batch_norm:
            out = self._batch_norm(*args, **kwargs)
            if out is not None:
                return out
        if func in _RELUS and not kwargs.get("inplace", False) and torch.is_grad_enabled() and args[0].requires_grad:
            return self.kernels.masked_relu(args[0])
        out = func(*args, **kwargs)
        if func in _CONVOLUTIONS and torch.is_grad_enabled() and not autocast_enabled(out.device.type):
            self._record(out, *args, **kwargs)
        return out

    def _record(
        self, out: Tensor, input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1,
        padding: Any = 0, dilation: Any = 1, groups: int = 1,
    ) -> None:
        if isinstance(padding, str) or math.prod(weight.shape[1:]) > self.max_macs:  # (C_out, C_in / groups, *kernel)
            return
        dims = weight.dim() - 2
        self.convolutions[out] = _Convolution(
            input, weight, bias, expand(stride, dims), expand(padding, dims), expand(dilation, dims), groups
        )

    def _batch_norm(
        self, input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
        bias: Tensor | None = None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
    ) -> Tensor | None:
        conv = self.convolutions.get(input) if training and torch.is_grad_enabled() else None
        if conv is None or autocast_enabled(input.device.type):
            return None
        return self.kernels.batch_norm_of_convolution(
            input, weight, bias, running_mean, running_var, momentum, eps, *conv
        )


@contextlib.contextmanager
def compact_activations(enabled: bool = True, max_macs: int = MAX_MACS) -> Iterator[None]:
    """Within the block (this thread only), BatchNorm over cheap convolutions recomputes its input
    and ReLU keeps a mask (module docstring); a no-op when ``enabled`` is false.

    Raises ``RuntimeError`` when fastadapt's C++ extension cannot be built here.
    """
    if not enabled:
        yield
        return
    with CompactActivations(load_extension(), max_macs):
        yield
