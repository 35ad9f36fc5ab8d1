import math

import pytest
import torch

from fastadapt.functional import accuracy, cosine_similarity, mean_ci95, prototypes, squared_euclidean


def test_accuracy():
    logits = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]]])  # (1, 3, 2)
    assert accuracy(logits, torch.tensor([[0, 1, 1]])).tolist() == pytest.approx([2 / 3])
    with pytest.raises(ValueError, match="do not match"):
        accuracy(logits, torch.tensor([0, 1, 1]))


def test_mean_ci95_closed_form():
    values = torch.tensor([0.0, 1.0] * 50)  # mean 0.5, population std 0.5
    result = mean_ci95(values)
    assert result.mean == pytest.approx(0.5) and result.n == 100
    assert result.ci95 == pytest.approx(1.96 * 0.5 / 10)
    assert mean_ci95(torch.tensor([3.0])).ci95 == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci95(torch.tensor([]))


def test_prototypes_are_class_means():
    emb = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 2]])
    protos = prototypes(emb, labels, ways=3)
    assert protos.tolist() == [[[2.0, 1.0], [0.0, 0.0], [0.0, 4.0]]]


def test_distances_against_brute_force():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    brute = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(squared_euclidean(a, b), brute)
    cos = torch.nn.functional.cosine_similarity(a[:, :, None], b[:, None], dim=-1)
    torch.testing.assert_close(cosine_similarity(a, b), cos)
    assert squared_euclidean(a, a).diagonal(dim1=1, dim2=2).abs().max() < 1e-5
    assert cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == 0.0
    assert math.isclose(cosine_similarity(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])).item(), 1.0, rel_tol=1e-6)
