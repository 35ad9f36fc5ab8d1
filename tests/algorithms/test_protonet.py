import math

import pytest
import torch
from torch import nn

from fastadapt.algorithms import ProtoNet
from fastadapt.double_backward import kernels_available
from fastadapt.models import create_model
from fastadapt.tasks import EpisodeBatch, TaskSpec


def identity_batch() -> EpisodeBatch:
    spec = TaskSpec(2, 2, 1)
    support_x = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]])  # prototypes (1,0), (0,5)
    query_x = torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])
    return EpisodeBatch(support_x, torch.tensor([[0, 0, 1, 1]]), query_x, torch.tensor([[0, 1]]), spec)


def test_logits_are_negative_squared_distances_to_class_means():
    batch = identity_batch()
    model = ProtoNet(nn.Identity())
    logits = model.predict(batch.support_x, batch.support_y, batch.query_x)
    expected = -torch.tensor([[[1.0, 17.0], [10.0, 4.0]]])
    torch.testing.assert_close(logits, expected)
    loss = model.meta_loss(batch).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(expected[0], torch.tensor([0, 1])))


def test_cosine_and_temperature():
    batch = identity_batch()
    model = ProtoNet(nn.Identity(), distance="cosine", temperature=10.0, learn_temperature=True)
    logits = model.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits[0, 0, 0].item() == pytest.approx(10 * 1 / math.sqrt(2), rel=1e-5)
    model.meta_loss(batch).loss.backward()
    assert model.log_temperature.grad is not None


def test_validation():
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        ProtoNet(nn.Identity(), distance="manhattan")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ProtoNet(nn.Identity(), temperature=0.0)


def test_bfloat16_backbone_gives_float32_logits_close_to_float32():
    batch = identity_batch()
    torch.manual_seed(0)
    backbone = nn.Linear(2, 8)
    exact = ProtoNet(backbone).predict(batch.support_x, batch.support_y, batch.query_x)
    fast_model = ProtoNet(backbone, precision="bfloat16")
    fast = fast_model.predict(batch.support_x, batch.support_y, batch.query_x)
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)  # bfloat16 really ran
    torch.testing.assert_close(fast, exact, rtol=2e-2, atol=2e-2)
    fast_model.meta_loss(batch).loss.backward()
    assert backbone.weight.grad is not None and backbone.weight.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        ProtoNet(backbone, precision="half")


def test_auto_precision_backbone_is_float32_where_bfloat16_is_emulated(monkeypatch):
    import fastadapt.runtime as runtime

    batch = identity_batch()
    backbone = nn.Linear(2, 8)
    for native, same_as in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(runtime, "native_bfloat16", lambda device_type, native=native: native)
        auto = ProtoNet(backbone, precision="auto").predict(batch.support_x, batch.support_y, batch.query_x)
        expected = ProtoNet(backbone, precision=same_as).predict(batch.support_x, batch.support_y, batch.query_x)
        assert auto.dtype == torch.float32
        torch.testing.assert_close(auto, expected, rtol=0, atol=0)


@pytest.mark.skipif(not kernels_available(), reason="fastadapt's C++ extension cannot be built here")
@pytest.mark.parametrize("channels_last", [False, True])
def test_compact_activations_give_the_same_loss_gradients_and_running_statistics(channels_last, monkeypatch):
    """ProtoNet's Conv-4 (max-pool, BatchNorm updating running statistics), float64: the meta-loss, its
    gradient and the BatchNorm buffers after the step equal the plain pass's; predictions (no graph)
    run without the mode."""
    from fastadapt.algorithms import protonet

    modes = []
    real = protonet.compact_activations
    monkeypatch.setattr(protonet, "compact_activations", lambda enabled: modes.append(enabled) or real(enabled))
    g = torch.Generator().manual_seed(0)
    spec = TaskSpec(3, 2, 2)
    batch = EpisodeBatch(torch.randn(1, 6, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(3).repeat_interleave(2)[None],
                         torch.randn(1, 6, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(3).repeat_interleave(2)[None], spec)
    results = []
    for compact in (False, True):
        torch.manual_seed(0)
        backbone = create_model("conv4", in_channels=1, hidden=8, bn="running", pool="max").double()
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        model = ProtoNet(backbone, compact_activations=compact)
        loss = model.meta_loss(batch).loss
        grads = torch.autograd.grad(loss, list(backbone.parameters()))
        assert modes.pop() is compact
        with torch.no_grad():
            model.predict(batch.support_x, batch.support_y, batch.query_x)
        assert modes.pop() is False  # no graph: nothing to keep smaller
        results.append((loss.detach(), grads, [b.clone() for b in backbone.buffers()]))
    (loss, grads, buffers), (loss_c, grads_c, buffers_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=0)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(buffers_c, buffers):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
