"""Closed-form checks of the metric learners' helpers in ``fastadapt.functional``."""

import math

import torch
from torch import nn

from fastadapt.functional import class_logsumexp, class_max, class_sums, embed_episodes, mask_by_class


def test_mask_by_class():
    scores = torch.tensor([[[1.0, 2.0, 3.0]]])  # (B=1, Q=1, N=3)
    masked = mask_by_class(scores, torch.tensor([[1, 0, 1]]), ways=3)
    inf = float("-inf")
    assert masked.tolist() == [[[[inf, 1.0, inf], [2.0, inf, inf], [inf, 3.0, inf]]]]


def test_class_logsumexp_is_log_of_summed_probabilities():
    scores = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]))
    labels = torch.tensor([[0, 1, 0, 2]])
    out = class_logsumexp(scores, labels, ways=3)
    torch.testing.assert_close(out.exp(), torch.tensor([[[0.4, 0.2, 0.4]]]))
    # a class without support examples gets -inf, the others stay finite
    assert class_logsumexp(scores, labels, ways=4)[0, 0, 3].item() == float("-inf")


def test_class_logsumexp_gradient_is_the_attention_within_the_class():
    scores = torch.tensor([[[0.0, math.log(3.0), 5.0]]], requires_grad=True)
    class_logsumexp(scores, torch.tensor([[0, 0, 1]]), ways=2)[0, 0, 0].backward()
    torch.testing.assert_close(scores.grad, torch.tensor([[[0.25, 0.75, 0.0]]]))


def test_class_max():
    scores = torch.tensor([[[1.0, 5.0, 3.0], [-2.0, -1.0, -4.0]]])  # (1, 2, 3)
    out = class_max(scores, torch.tensor([[0, 1, 0]]), ways=2)
    assert out.tolist() == [[[3.0, 5.0], [-2.0, -1.0]]]


def test_class_sums_vectors_and_feature_maps():
    emb = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 2]])
    assert class_sums(emb, labels, ways=3).tolist() == [[[4.0, 2.0], [0.0, 0.0], [0.0, 4.0]]]
    maps = torch.arange(2 * 4 * 2 * 3 * 3, dtype=torch.float32).view(2, 4, 2, 3, 3)  # (B, N, C, h, w)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]])
    sums = class_sums(maps, labels, ways=2)
    assert sums.shape == (2, 2, 2, 3, 3)
    torch.testing.assert_close(sums[0, 1], maps[0, 0] + maps[0, 2])
    torch.testing.assert_close(sums[1, 0], maps[1, 0] + maps[1, 1])


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * 2


def test_embed_episodes_one_call_keeps_feature_shape():
    backbone = Counting()
    support, query = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 6, 2, 5, 5)
    z_support, z_query = embed_episodes(backbone, support, query)
    assert backbone.calls == 1
    torch.testing.assert_close(z_support, support * 2)
    torch.testing.assert_close(z_query, query * 2)
