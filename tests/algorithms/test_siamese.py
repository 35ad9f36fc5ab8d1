import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import SiameseNet
from fastadapt.functional import accuracy
from fastadapt.tasks import EpisodeBatch, PairBatch, TaskSpec


def model_with_weights(aggregation: str = "mean") -> SiameseNet:
    """Identity embeddings; pair log-odds s = -(|d_0| + 2 |d_1|) + 3."""
    model = SiameseNet(nn.Identity(), embedding_dim=2, aggregation=aggregation)
    with torch.no_grad():
        model.distance_layer.weight.copy_(torch.tensor([[-1.0, -2.0]]))
        model.distance_layer.bias.fill_(3.0)
    return model


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def test_pair_batch_loss_and_two_class_logits():
    model = model_with_weights()
    x1 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    x2 = torch.tensor([[0.5, 0.0], [0.0, 3.0], [2.0, 1.0]])
    pairs = PairBatch(x1, x2, same=torch.tensor([1.0, 0.0, 0.0]), indices=torch.arange(3))
    s = torch.tensor([3 - 0.5, 3 - 1 - 4.0, 3 - 2.0])  # -(|dx| + 2|dy|) + 3
    out = model.meta_loss(pairs)
    expected = -(F.logsigmoid(s[0]) + F.logsigmoid(-s[1]) + F.logsigmoid(-s[2])) / 3
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (3, 1, 2)
    torch.testing.assert_close(out.logits.softmax(-1)[:, 0, 1], torch.sigmoid(s))
    assert accuracy(out.logits, pairs.query_y).mean().item() == pytest.approx(2 / 3)  # pair 2: s = 1 > 0, "same"


def episode() -> EpisodeBatch:
    support_x = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [4.0, 4.0], [3.0, 5.0]]])  # classes 0, 0, 1, 1
    query_x = torch.tensor([[[0.5, 0.0], [3.0, 4.0]]])
    return EpisodeBatch(support_x, torch.tensor([[0, 0, 1, 1]]), query_x, torch.tensor([[0, 1]]), TaskSpec(2, 2, 1))


PAIR_LOGITS = torch.tensor([[[2.5, 2.5, -8.5, -9.5], [-8.0, -7.0, 2.0, 1.0]]])  # (1, Q, N_s)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_episode_pairs_and_class_aggregation(aggregation):
    batch = episode()
    model = model_with_weights(aggregation)
    torch.testing.assert_close(model.episode_pair_logits(batch.support_x, batch.query_x), PAIR_LOGITS)
    p = torch.sigmoid(PAIR_LOGITS).view(1, 2, 2, 2)  # (B, Q, ways, shots)
    expected = logit(p.mean(-1)) if aggregation == "mean" else logit(p.amax(-1))
    logits = model.predict(batch.support_x, batch.support_y, batch.query_x)
    torch.testing.assert_close(logits, expected)
    out = model.meta_loss(batch)
    torch.testing.assert_close(out.logits, expected)
    same = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])
    torch.testing.assert_close(out.loss, F.binary_cross_entropy(torch.sigmoid(PAIR_LOGITS), same))


def test_gradients_reach_the_distance_layer_from_both_inputs():
    model = model_with_weights()
    model.meta_loss(episode()).loss.backward()
    first = model.distance_layer.weight.grad.clone()
    model.zero_grad()
    model.meta_loss(PairBatch(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([1.0, 0.0]))).loss.backward()
    assert first.abs().sum() > 0 and model.distance_layer.weight.grad.abs().sum() > 0


def test_validation():
    with pytest.raises(ValueError, match="embedding_dim must be >= 1, got 0"):
        SiameseNet(nn.Identity(), embedding_dim=0)
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        SiameseNet(nn.Identity(), aggregation="median")
    with pytest.raises(ValueError, match="gives 2-d embeddings .* embedding_dim=64"):
        SiameseNet(nn.Identity()).meta_loss(episode())
    with pytest.raises(TypeError, match="EpisodeBatch or a PairBatch, got tuple"):
        model_with_weights().meta_loss((torch.zeros(1, 2), torch.zeros(1, 2)))
