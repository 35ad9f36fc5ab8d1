import pytest
import torch

from fastadapt.models import create_model, list_models
from fastadapt.registry import UnknownNameError

INPUTS = {"conv4": torch.randn(6, 1, 28, 28), "mlp": torch.randn(6, 1), "relation_encoder": torch.randn(6, 1, 28, 28)}


@pytest.mark.parametrize("name", list_models())
def test_every_backbone_builds_and_runs(name):
    model = create_model(name)
    out = model(INPUTS[name])
    assert out.shape[0] == 6 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_backbone_suggests():
    with pytest.raises(UnknownNameError, match="unknown backbone 'conv5'; did you mean 'conv4'"):
        create_model("conv5")


def test_conv4_shapes():
    assert create_model("conv4")(torch.randn(2, 1, 28, 28)).shape == (2, 64)
    head = create_model("conv4", out_features=5, pool="stride")
    assert head(torch.randn(2, 1, 28, 28)).shape == (2, 5) and head.feature_dim == 64 * 2 * 2
    maml = create_model("conv4", out_features=5, pool="stride", readout="mean", bn="batch")
    assert maml.head.in_features == 64 and maml(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    rgb = create_model("conv4", in_channels=3, hidden=32, image_size=84)
    assert rgb(torch.randn(2, 3, 84, 84)).shape == (2, 32 * 5 * 5)


def test_conv4_bn_policies():
    batch = create_model("conv4", bn="batch")
    assert not list(batch.buffers())  # no running statistics at all: always batch statistics
    x = torch.randn(8, 1, 28, 28)
    batch.eval()
    out_eval = batch(x)
    batch.train()
    torch.testing.assert_close(out_eval, batch(x))  # same in train and eval: transductive
    running = create_model("conv4", bn="running")
    assert any("running_mean" in n for n, _ in running.named_buffers())
    running.eval()
    single = running(x[:1])
    torch.testing.assert_close(single, running(x)[:1])  # eval: independent of the batch
    none = create_model("conv4", bn="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in none.modules())
    with pytest.raises(ValueError, match="unknown BatchNorm policy 'transductive'"):
        create_model("conv4", bn="transductive")


def test_mlp_is_maml_sinusoid_net():
    model = create_model("mlp")
    sizes = [tuple(p.shape) for p in model.parameters()]
    assert sizes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
