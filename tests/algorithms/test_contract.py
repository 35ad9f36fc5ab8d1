"""Contract tests run over every registered algorithm."""

import pytest
import torch

from fastadapt.algorithms import ALGORITHMS, MetaLearner, create_algorithm
from fastadapt.data.synthetic import load_synthetic
from fastadapt.models import create_model
from fastadapt.tasks import EpisodeSampler, TaskSpec

SPEC = TaskSpec(ways=3, shots=2, queries=2)


# Algorithms whose backbone must output logits (a head with `ways` outputs), not embeddings.
LOGIT_BACKBONES = {"maml", "anil", "metasgd", "reptile"}
# Algorithms needing another backbone (and its arguments) than the default Conv-4.
BACKBONES = {
    "relation": (("relation_encoder", {"hidden": 8, "bn": "running", "padding": "same"}), {"image_size": 16}),
    "matching": (("conv4", {"hidden": 8, "bn": "running", "image_size": 16}), {"embedding_dim": 8, "fce": True}),
    "siamese": (("conv4", {"hidden": 8, "bn": "running", "image_size": 16}), {"embedding_dim": 8}),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in BACKBONES:
        (backbone_name, backbone_args), algorithm_args = BACKBONES[name]
        return create_algorithm(name, create_model(backbone_name, **backbone_args), **algorithm_args)
    head = SPEC.ways if name in LOGIT_BACKBONES else None
    backbone = create_model("conv4", hidden=8, bn="running", image_size=16, out_features=head)
    return create_algorithm(name, backbone)


@pytest.fixture(scope="module")
def batch():
    data = load_synthetic(partition="train", image_size=16)
    return EpisodeSampler(data, SPEC, seed=0).sample(range(2))


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_meta_loss_contract(name, batch):
    model = build(name)
    assert isinstance(model, MetaLearner)
    out = model.meta_loss(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (2, SPEC.ways * SPEC.queries, SPEC.ways)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_predict_contract(name, batch):
    model = build(name).eval()
    with torch.no_grad():
        first = model.predict(batch.support_x, batch.support_y, batch.query_x)
        second = model.predict(batch.support_x, batch.support_y, batch.query_x)
    assert first.shape == (2, SPEC.ways * SPEC.queries, SPEC.ways)
    assert torch.equal(first, second)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.predict(batch.support_x, batch.support_y, batch.query_x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "predict changed the model"
