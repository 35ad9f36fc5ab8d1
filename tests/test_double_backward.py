"""The compiled convolution/BatchNorm with an explicit double backward: derivatives in float64
against finite differences (gradcheck/gradgradcheck), forward values and buffers against
PyTorch, what the mode routes and what it leaves to PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastadapt.double_backward as db
from fastadapt.double_backward import explicit_double_backward


def _t(*shape, requires_grad=True, scale=1.0, shift=0.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale + shift).requires_grad_(requires_grad)


def _under_mode(fn):
    def wrapped(*args):
        with explicit_double_backward():
            return fn(*args)
    return wrapped


CONVS = {
    "2d stride 2, bias": (F.conv2d, (3, 4, 9, 9), (5, 4, 3, 3), True, dict(stride=2, padding=1)),
    "2d no bias, mixed stride/padding": (F.conv2d, (2, 4, 7, 8), (5, 4, 3, 2), False, dict(stride=(1, 2), padding=(0, 1))),
    "2d groups, dilation": (F.conv2d, (2, 4, 9, 9), (6, 2, 3, 3), True, dict(padding=2, dilation=2, groups=2)),
    "1d": (F.conv1d, (2, 3, 11), (4, 3, 3), True, dict(stride=2)),
    "3d": (F.conv3d, (2, 2, 5, 5, 5), (3, 2, 3, 3, 3), True, dict(padding=1)),
}


@pytest.mark.parametrize("case", sorted(CONVS))
def test_convolution_first_and_second_derivatives(case):
    torch.manual_seed(0)
    conv, x_shape, w_shape, bias, kwargs = CONVS[case]
    inputs = (_t(*x_shape), _t(*w_shape)) + ((_t(w_shape[0]),) if bias else ())
    fn = _under_mode(lambda x, w, *b: conv(x, w, *b, **kwargs))
    torch.testing.assert_close(fn(*inputs), conv(*inputs, **kwargs), rtol=0, atol=0)
    assert "Conv" in fn(*inputs).grad_fn.name()
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_convolution_of_an_input_without_gradient():
    # The first layer of a network: no gradient for the images, only the weights.
    torch.manual_seed(0)
    x, w, b = _t(2, 1, 8, 8, requires_grad=False), _t(3, 1, 3, 3), _t(3)
    fn = _under_mode(lambda w, b: F.conv2d(x, w, b, stride=2, padding=1))
    assert gradgradcheck(fn, (w, b))


@pytest.mark.parametrize("shape, channels_last", [((4, 3, 5, 5), False), ((6, 3), False), ((4, 3, 5, 5), True)])
def test_batch_norm_first_and_second_derivatives(shape, channels_last):
    # Contiguous CPU tensors take the fused two-pass loop; NHWC ones the ATen formulas.
    torch.manual_seed(0)
    x = _t(*shape, scale=3.0, shift=1.0)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    inputs = (x, _t(shape[1]), _t(shape[1]))
    fn = _under_mode(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-3))
    torch.testing.assert_close(fn(*inputs), F.batch_norm(inputs[0], None, None, *inputs[1:], True, eps=1e-3))
    assert "BatchNorm" in fn(*inputs).grad_fn.name()
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_batch_norm_updates_running_statistics_like_pytorch():
    torch.manual_seed(0)
    x, w, b = _t(4, 3, 5, 5, shift=2.0), _t(3), _t(3)
    ours = (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    theirs = tuple(t.clone() for t in ours)
    with explicit_double_backward():
        out = F.batch_norm(x, *ours, w, b, training=True, momentum=0.3)
    torch.testing.assert_close(out, F.batch_norm(x, *theirs, w, b, training=True, momentum=0.3))
    for a, c in zip(ours, theirs):
        torch.testing.assert_close(a, c, rtol=1e-14, atol=0)
        assert not torch.equal(a, torch.zeros_like(a) if a is ours[0] else torch.ones_like(a))


def test_third_derivative_convolution_correct_batch_norm_refused():
    # The convolution's explicit backward nodes are differentiable ATen calls; BatchNorm's
    # double backward uses the batch statistics as constants and must refuse a third order.
    torch.manual_seed(0)
    x, w, g, bb = _t(2, 2, 5, 5), _t(3, 2, 3, 3), _t(3), _t(3)

    def second(x, w, bn):
        y = F.conv2d(x, w, stride=2, padding=1)
        y = F.batch_norm(y, None, None, g, bb, training=True) if bn else y
        (gw,) = torch.autograd.grad((y.tanh() ** 2).sum(), w, create_graph=True)
        return gw

    assert gradgradcheck(_under_mode(lambda x, w: second(x, w, False)), (x, w))
    with pytest.raises(RuntimeError, match="first and second derivatives only"):
        gradgradcheck(_under_mode(lambda x, w: second(x, w, True)), (x, w))


def test_what_falls_through_to_pytorch():
    torch.manual_seed(0)
    x, w, g, b = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 3, 3), torch.ones(3), torch.zeros(3)
    stats = (torch.zeros(3), torch.ones(3))
    with explicit_double_backward():
        assert "Cpp" in F.conv2d(x, w, padding="valid").grad_fn.name()
        assert F.conv2d(x, w, padding="same").grad_fn.name() == "ConvolutionBackward0"
        assert F.batch_norm(x, *stats, g, b, training=False).grad_fn.name() == "NativeBatchNormBackward0"
        assert F.batch_norm(x, None, None, None, None, training=True).grad_fn.name() == "NativeBatchNormBackward0"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.conv2d(x, w).grad_fn.name() == "ConvolutionBackward0"
        assert F.relu(x).grad_fn.name() == "ReluBackward0"
    assert F.conv2d(x, w).grad_fn.name() == "ConvolutionBackward0"  # only inside the block
    with explicit_double_backward(enabled=False):
        assert F.conv2d(x, w).grad_fn.name() == "ConvolutionBackward0"
