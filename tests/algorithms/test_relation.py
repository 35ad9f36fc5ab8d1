import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms import RelationNet
from fastadapt.models import create_model
from fastadapt.tasks import EpisodeBatch, TaskSpec


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def map_batch(shots: int = 2) -> EpisodeBatch:
    """3-way episodes of 1x4x4 'images' (feature maps under an nn.Identity backbone)."""
    g = torch.Generator().manual_seed(0)
    spec = TaskSpec(3, shots, 2)
    support_y = torch.arange(3).repeat_interleave(shots)
    query_y = torch.tensor([2, 0, 1, 1, 0, 2])
    return EpisodeBatch(
        torch.randn(2, 3 * shots, 1, 4, 4, generator=g), support_y.repeat(2, 1),
        torch.randn(2, 6, 1, 4, 4, generator=g), query_y.repeat(2, 1), spec,
    )


def test_pairs_are_class_sums_and_queries():
    batch = map_batch(shots=2)
    model = RelationNet(nn.Identity(), image_size=4)
    # relation "module" = <class part, query part>: exposes how the pairs were formed
    model.relation_convs = Lambda(lambda x: (x[:, :1] * x[:, 1:]).sum((1, 2, 3)).unsqueeze(1))
    model.relation_head = nn.Identity()
    logits = model.predict(batch.support_x, batch.support_y, batch.query_x)
    class_sums = batch.support_x.view(2, 3, 2, 16).sum(2)  # (B, ways, 16): K-shot sum
    expected = batch.query_x.view(2, 6, 16) @ class_sums.transpose(1, 2)  # (B, Q, ways)
    torch.testing.assert_close(logits, expected)


def test_scores_shape_and_mse_to_one_hot():
    torch.manual_seed(0)
    batch = map_batch()
    model = RelationNet(nn.Identity(), image_size=4, relation_channels=4, relation_dim=3)
    out = model.meta_loss(batch)
    assert out.logits.shape == (2, 6, 3)
    scores = torch.sigmoid(out.logits)
    target = F.one_hot(batch.query_y, 3).float()
    torch.testing.assert_close(out.loss, ((scores - target) ** 2).sum() / (2 * 6 * 3))
    ce = RelationNet(nn.Identity(), image_size=4, relation_channels=4, relation_dim=3, loss="cross_entropy")
    ce.load_state_dict(model.state_dict())
    out_ce = ce.meta_loss(batch)
    torch.testing.assert_close(out_ce.logits, out.logits)
    torch.testing.assert_close(out_ce.loss, F.cross_entropy(out.logits.flatten(0, 1), batch.query_y.flatten()))


def test_paper_encoder_at_28x28():
    torch.manual_seed(0)
    encoder = create_model("relation_encoder")
    assert encoder(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 5, 5)
    assert create_model("relation_encoder", padding="same")(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    model = RelationNet(encoder)
    assert model.relation_convs[0][0].in_channels == 128
    assert model.relation_head[0].in_features == 64  # 5x5 -> 2x2 -> 1x1 after two max-pools
    support, query = torch.rand(1, 5, 1, 28, 28), torch.rand(1, 10, 1, 28, 28)
    with torch.no_grad():
        logits = model.eval().predict(support, torch.arange(5).unsqueeze(0), query)
    assert logits.shape == (1, 10, 5) and torch.isfinite(logits).all()


def test_probe_leaves_backbone_untouched():
    encoder = create_model("relation_encoder", hidden=4, bn="running")
    RelationNet(encoder)
    assert encoder.training and all(m.training for m in encoder.modules())
    bn = encoder.features[1]
    assert bn.num_batches_tracked.item() == 0 and bn.running_mean.abs().sum() == 0


def test_validation():
    with pytest.raises(ValueError, match="unknown loss 'bce'"):
        RelationNet(nn.Identity(), image_size=4, loss="bce")
    with pytest.raises(ValueError, match="unknown BatchNorm policy 'fixed'"):
        RelationNet(nn.Identity(), image_size=4, bn="fixed")
    with pytest.raises(ValueError, match="sizes must be positive"):
        RelationNet(nn.Identity(), image_size=4, relation_dim=0)
    with pytest.raises(ValueError, match=r"feature maps .* got \(N, 784\) for 1x28x28"):
        RelationNet(nn.Flatten())
    with pytest.raises(ValueError, match=r"got \(N, 8, 2, 2\) for 1x16x16"):
        RelationNet(create_model("relation_encoder", hidden=8), image_size=16)
    with pytest.raises(ValueError, match="unknown padding 'valid'"):
        create_model("relation_encoder", padding="valid")
