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
through a second-order meta-gradient). The extension is ``fastadapt.extension``'s (compiled on first use,
cached; a C++ compiler and ``ninja``: ``pip install fastadapt[kernels]``). Anything else
falls through to PyTorch: string padding, BatchNorm with running statistics in eval mode or
without affine parameters, and any call under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from fastadapt.extension import extension_available as kernels_available
from fastadapt.extension import load_extension as load_kernels
from fastadapt.runtime import autocast_enabled

__all__ = ["ExplicitDoubleBackward", "explicit_double_backward", "kernels_available", "load_kernels"]


def expand(value: int | Sequence[int], dims: int) -> list[int]:
    """A convolution's ``stride``/``padding``/``dilation`` argument as one int per spatial dimension."""
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
            input, weight, bias, expand(stride, dims), expand(padding, dims), expand(dilation, dims), groups
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
