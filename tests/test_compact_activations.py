"""fastadapt.compact_activations: same derivatives as the plain pass, fewer saved bytes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastadapt.compact_activations import CompactActivations, compact_activations
from fastadapt.double_backward import kernels_available, load_kernels
from fastadapt.models import create_model

pytestmark = pytest.mark.skipif(not kernels_available(), reason="fastadapt's C++ extension cannot be built here")


def conv4(bn: str = "batch", pool: str = "stride", channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("conv4", in_channels=1, hidden=8, out_features=5, bn=bn, pool=pool, readout="mean").double()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def loss_and_grads(model: nn.Module, x: torch.Tensor, compact: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with compact_activations(compact):
        out = model(x)
    loss = nn.functional.cross_entropy(out, torch.arange(x.shape[0]) % 5)
    return loss, list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize("bn", ["batch", "running"])
@pytest.mark.parametrize("pool", ["stride", "max"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_same_loss_gradients_and_running_statistics(bn, pool, channels_last):
    plain, compact = conv4(bn, pool, channels_last), conv4(bn, pool, channels_last)
    x = torch.randn(20, 1, 28, 28, dtype=torch.float64)
    loss, grads = loss_and_grads(plain, x, compact=False)
    compact_loss, compact_grads = loss_and_grads(compact, x, compact=True)
    assert torch.equal(loss, compact_loss)  # the forward is the same operations
    for g, h in zip(grads, compact_grads):
        torch.testing.assert_close(h, g, rtol=1e-10, atol=1e-12)
    for b, c in zip(plain.buffers(), compact.buffers()):
        assert torch.equal(b, c)


def saved_bytes(model: nn.Module, x: torch.Tensor, compact: bool) -> int:
    """Bytes of the distinct storages the pass's graph keeps for its backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # this measurement's graph is never run

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), compact_activations(compact):
        model(x)
    return sum(storages.values())


def test_the_first_blocks_output_and_relu_outputs_are_not_kept():
    model = conv4()
    x = torch.randn(75, 1, 28, 28, dtype=torch.float64)
    plain, compact = saved_bytes(model, x, False), saved_bytes(model, x, True)
    first_map = 75 * 8 * 14 * 14 * 8  # float64 (N, hidden, 14, 14): BatchNorm 1's input, gone
    last_relu = 75 * 8 * 2 * 2 * 8  # block 4's ReLU output: only the ReLU kept it (the readout is a mean)
    masks = sum(75 * 8 * s * s for s in (14, 7, 4, 2))  # one byte per element, one per ReLU
    conv_bias = 8 * 8  # kept to recompute the first convolution (its own node keeps input and weight)
    # The other ReLU outputs stay: the next convolutions keep them as their inputs.
    assert plain - compact == first_map + last_relu - masks - conv_bias


def node_names(out: torch.Tensor) -> list[str]:
    """Names of the autograd nodes behind ``out``."""
    names, stack, seen = [], [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__ if type(node).__name__ != "CppFunction" else node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize(("max_macs", "recomputed"), [(9, 1), (71, 1), (72, 4)])
def test_only_convolutions_within_max_macs_are_recomputed(max_macs, recomputed):
    model = conv4()  # block 1: 1 x 3 x 3 = 9 multiply-adds per output, blocks 2-4: 8 x 3 x 3 = 72
    with CompactActivations(load_kernels(), max_macs=max_macs):
        out = model(torch.randn(10, 1, 28, 28, dtype=torch.float64))
    names = node_names(out)
    assert sum("BatchNormOfConvolution" in n for n in names) == recomputed
    assert sum("NativeBatchNormBackward" in n for n in names) == 4 - recomputed
    with pytest.raises(ValueError, match="max_macs must be an int >= 1, got 0"):
        CompactActivations(load_kernels(), max_macs=0)


def test_batch_norm_backward_is_differentiable_once():
    model = conv4()
    x = torch.randn(10, 1, 28, 28, dtype=torch.float64)
    with compact_activations():
        loss = model(x).square().sum()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, [model.features[0].weight], create_graph=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_into_input_matches_aten(layout, affine):
    torch.manual_seed(1)
    x = torch.randn(6, 5, 4, 3, dtype=torch.float64)
    g = torch.randn_like(x)
    if layout != "contiguous":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, dtype=torch.float64) if affine else None
    mean = x.mean((0, 2, 3))
    invstd = (x.var((0, 2, 3), unbiased=False) + 1e-5).rsqrt()
    want = torch.ops.aten.native_batch_norm_backward(g, x, w, None, None, mean, invstd, True, 1e-5, [True, affine, affine])
    got = load_kernels().batch_norm_backward_into_input(g, x.clone(), w, mean, invstd, 1e-5)
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    if affine:
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[2], want[2], rtol=1e-10, atol=1e-12)


def test_masked_relu_has_relus_derivatives_of_any_order():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    relu = load_kernels().masked_relu
    assert torch.equal(relu(x), torch.relu(x))
    torch.autograd.gradcheck(lambda t: relu(t) * t, (x,))
    torch.autograd.gradgradcheck(lambda t: relu(t) * t, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_relu_gradient_is_threshold_backward_bitwise(dtype):
    x = torch.randn(4, 3, 5, 5, dtype=dtype)
    x[0, 0, 0, :3] = torch.tensor([0.0, float("nan"), -0.0])
    x.requires_grad_(True)
    g = torch.randn(4, 3, 5, 5, dtype=dtype)
    (got,) = torch.autograd.grad(load_kernels().masked_relu(x), x, g)
    (want,) = torch.autograd.grad(torch.relu(x), x, g)
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_channels_last_relu_gradient_keeps_the_outputs_layout():
    x = torch.randn(4, 3, 5, 5, requires_grad=True).contiguous(memory_format=torch.channels_last)
    y = load_kernels().masked_relu(x)
    seen = []
    x.register_hook(lambda g: seen.append(g.is_contiguous(memory_format=torch.channels_last)))
    y.backward(torch.randn(4, 3, 5, 5))  # a contiguous upstream gradient
    assert seen == [True]


def test_nothing_changes_without_gradients_or_when_disabled():
    model = conv4()
    x = torch.randn(10, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad(), compact_activations():
        out = model(x)
    assert out.grad_fn is None
    with compact_activations(enabled=False):
        out = model(x)
    assert not any("MaskedRelu" in n for n in node_names(out))
    reference = copy.deepcopy(model)
    with compact_activations():
        torch.testing.assert_close(model(x), reference(x))
