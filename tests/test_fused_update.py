"""The compiled inner Adam step (``csrc/fused_update.cpp``, Reptile's ``fused_update``): the foreach update's values."""

from __future__ import annotations

import pytest
import torch

from fastadapt.algorithms import Reptile
from fastadapt.double_backward import kernels_available, load_kernels
from fastadapt.models import create_model

pytestmark = pytest.mark.skipif(not kernels_available(), reason="fastadapt's C++ extension cannot be built here")


def tensors(dtype: torch.dtype, grad_layout: str = "same") -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Conv-like weights (one channels-last, one large enough to be split over threads), gradients,
    and second moments already non-zero."""
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 32, 3, 3), (5, 7), (64,), (40000,)]
    weights = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    weights[0] = weights[0].contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(w.shape, generator=g, dtype=dtype) for w in weights]  # contiguous (NCHW) for the first
    if grad_layout == "same":
        grads[0] = grads[0].contiguous(memory_format=torch.channels_last)
    elif grad_layout == "strided":
        grads[1] = torch.randn(7, 5, generator=g, dtype=dtype).t()  # a transposed view
    # in the weights' layout, as zeros_like gives
    moments = [torch.empty_like(w).copy_(torch.rand(w.shape, generator=g, dtype=dtype)) for w in weights]
    return weights, grads, moments


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_layout", ["same", "nchw", "strided"])
@pytest.mark.parametrize("threads", [1, 2])
def test_adam_step_equals_the_foreach_update(dtype, grad_layout, threads):
    reference, fused = Reptile(torch.nn.Linear(1, 1), inner_lr=0.01), Reptile(torch.nn.Linear(1, 1), inner_lr=0.01, fused_update=True)
    w, g, v = tensors(dtype, grad_layout)
    w2, g2, v2 = ([t.clone(memory_format=torch.preserve_format) for t in ts] for ts in (w, g, v))
    g2[1] = g[1]  # the strided view stays a view
    before = [t._version for t in w2 + v2]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for t in (1, 2, 7):
            reference._update(w, g, v, t)
            fused._update(w2, g2, v2, t)
    finally:
        torch.set_num_threads(previous)
    tolerance = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-14, "atol": 1e-15}
    for a, b in zip(w + v, w2 + v2):
        torch.testing.assert_close(b, a, **tolerance)
        assert b.stride() == a.stride()  # updated in place, layout kept
    assert all(t._version > b for t, b in zip(w2 + v2, before))  # autograd sees the in-place update


def test_adam_step_names_what_it_cannot_take():
    kernels = load_kernels()
    w, g, v = [torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)]
    with pytest.raises(RuntimeError, match="1 weights, 1 grads, 2 moments"):
        kernels.adam_beta1_zero_step(w, g, v * 2, 0.1, 0.999, 1e-8, 1)
    with pytest.raises(RuntimeError, match="step t must be >= 1, got 0"):
        kernels.adam_beta1_zero_step(w, g, v, 0.1, 0.999, 1e-8, 0)
    with pytest.raises(RuntimeError, match="float32 or float64 weight, grad and moment of one dtype"):
        kernels.adam_beta1_zero_step(w, [torch.zeros(3, dtype=torch.float64)], v, 0.1, 0.999, 1e-8, 1)
    with pytest.raises(RuntimeError, match="sizes differ"):
        kernels.adam_beta1_zero_step(w, [torch.zeros(4)], v, 0.1, 0.999, 1e-8, 1)
    with pytest.raises(RuntimeError, match="weight and moment must be dense and laid out alike"):
        kernels.adam_beta1_zero_step([torch.zeros(2, 3)], [torch.zeros(2, 3)], [torch.zeros(3, 2).t()], 0.1, 0.999, 1e-8, 1)


def test_reptile_with_fused_update_trains_tasks_as_the_foreach_update():
    """``train_task`` (5 Adam steps on a Conv-4 without BatchNorm, float64) with and without the compiled
    step (with BatchNorm, a convolution bias's gradient is zero up to rounding, which Adam turns into
    steps of either sign: any change of rounding moves them); bfloat16 parameters take the foreach
    update (no kernel for them) and still run."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 16, 16, dtype=torch.float64), torch.arange(3).repeat_interleave(4)
    results = []
    for fused in (False, True):
        torch.manual_seed(1)
        backbone = create_model("conv4", hidden=4, bn="none", image_size=16, out_features=3).double()
        model = Reptile(backbone, inner_lr=0.01, inner_steps=5, inner_batch=6, fused_update=fused)
        results.append(model.train_task(x, y, 5))
    for name, p in results[0].items():
        torch.testing.assert_close(results[1][name], p, rtol=1e-12, atol=1e-14)
        assert not torch.equal(p, dict(backbone.named_parameters())[name])  # every tensor moved
    backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3).to(torch.bfloat16)
    adapted = Reptile(backbone, inner_lr=0.01, fused_update=True).train_task(x.to(torch.bfloat16), y, 2)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in adapted.values())
