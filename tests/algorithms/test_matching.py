import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import MatchingNet
from fastadapt.tasks import EpisodeBatch, TaskSpec


def identity_batch() -> EpisodeBatch:
    """2-way 2-shot, 1 query per class; embeddings are the inputs (nn.Identity backbone)."""
    support_x = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 2.0]]])
    query_x = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    return EpisodeBatch(support_x, torch.tensor([[0, 0, 1, 1]]), query_x, torch.tensor([[0, 1]]), TaskSpec(2, 2, 1))


def expected_log_probs(temperature: float = 1.0) -> torch.Tensor:
    s = 1 / math.sqrt(2)
    t = 1 / math.sqrt(5)
    cosines = torch.tensor([[1.0, s, 0.0, -t], [0.0, s, 1.0, 2 * t]])  # (Q, N_s)
    attention = torch.softmax(temperature * cosines, -1)
    probs = torch.stack([attention[:, :2].sum(-1), attention[:, 2:].sum(-1)], -1)  # (Q, ways)
    return probs.log().unsqueeze(0)


def test_attention_over_cosines_gives_log_probabilities():
    batch = identity_batch()
    model = MatchingNet(nn.Identity())
    log_probs = model.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(log_probs, expected_log_probs())
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(1, 2))
    out = model.meta_loss(batch)
    torch.testing.assert_close(out.logits, expected_log_probs())
    nll = -(expected_log_probs()[0, 0, 0] + expected_log_probs()[0, 1, 1]) / 2
    torch.testing.assert_close(out.loss, nll)
    # log-probabilities are logits: cross-entropy on them is the same NLL
    torch.testing.assert_close(F.cross_entropy(out.logits[0], batch.query_y[0]), nll)


def test_temperature_sharpens_the_attention():
    batch = identity_batch()
    log_probs = MatchingNet(nn.Identity(), temperature=10.0).predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(log_probs, expected_log_probs(10.0))


def test_tasks_are_independent_in_a_batch():
    one = identity_batch()
    order = torch.tensor([3, 1, 2, 0])
    two = EpisodeBatch(
        torch.cat([one.support_x, one.support_x[:, order]]),
        torch.cat([one.support_y, one.support_y[:, order]]),
        torch.cat([one.query_x, one.query_x]),
        torch.cat([one.query_y, one.query_y]),
        one.spec,
    )
    log_probs = MatchingNet(nn.Identity()).predict(two.support_x, two.support_y, two.query_x)
    torch.testing.assert_close(log_probs[0], log_probs[1])  # without FCE the support order is irrelevant


def test_full_context_embeddings_match_the_appendix_equations():
    torch.manual_seed(0)
    model = MatchingNet(nn.Identity(), fce=True, embedding_dim=2, processing_steps=1)
    batch = identity_batch()
    g, f = model.embed(batch.support_x, batch.query_x)
    fce = model.fce
    both, _ = fce.support_lstm(batch.support_x)
    torch.testing.assert_close(g, batch.support_x + both[..., :2] + both[..., 2:])
    query = batch.query_x[0]  # f'(x), (Q, D)
    readout = torch.softmax(query @ g[0].T, -1) @ g[0]  # r_0 at h_0 = f'(x)
    h_hat, _ = fce.query_cell(torch.cat([query, readout], -1), (query, torch.zeros_like(query)))
    torch.testing.assert_close(f[0], h_hat + query)


def test_fce_changes_outputs_and_its_parameters_learn():
    torch.manual_seed(0)
    batch = identity_batch()
    plain = MatchingNet(nn.Identity())
    fce = MatchingNet(nn.Identity(), fce=True, embedding_dim=2, processing_steps=3)
    a = plain.predict(batch.support_x, batch.support_y, batch.query_x)
    b = fce.predict(batch.support_x, batch.support_y, batch.query_x)
    assert not torch.allclose(a, b)
    fce.meta_loss(batch).loss.backward()
    names = [n for n, _ in fce.named_parameters()]
    assert names and all(n.startswith("fce.") for n in names)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fce.parameters())
    with torch.no_grad():
        assert fce.predict(batch.support_x, batch.support_y, batch.query_x).shape == (1, 2, 2)


def test_validation():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0.0"):
        MatchingNet(nn.Identity(), temperature=0.0)
    with pytest.raises(ValueError, match="embedding_dim and processing_steps must be >= 1, got 64, 0"):
        MatchingNet(nn.Identity(), processing_steps=0)
    batch = identity_batch()
    model = MatchingNet(nn.Identity(), fce=True, embedding_dim=64)
    with pytest.raises(ValueError, match="gives 2-d embeddings .* embedding_dim=64"):
        model.meta_loss(batch)


def test_learned_temperature_is_a_meta_parameter_with_a_gradient():
    batch = identity_batch()
    model = MatchingNet(nn.Identity(), temperature=10.0, learn_temperature=True)
    assert [name for name, _ in model.named_parameters()] == ["log_temperature"]
    log_probs = model.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(log_probs, expected_log_probs(10.0))
    F.nll_loss(log_probs.flatten(0, 1), batch.query_y.flatten()).backward()
    assert model.log_temperature.grad is not None and model.log_temperature.grad != 0
