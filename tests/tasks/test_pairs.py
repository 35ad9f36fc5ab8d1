import numpy as np
import pytest
import torch

from fastadapt.data.base import ClassDataset, Rotations
from fastadapt.tasks import PairBatch, PairSampler, TaskSource, TaskSpec, batch_at

CLASSES, PER_CLASS = 6, 5


@pytest.fixture
def rotated() -> ClassDataset:
    """6 classes x 5 examples of 1x2x2 images with 4 distinct values each, x 4 rotations."""
    x = torch.arange(CLASSES * PER_CLASS * 4, dtype=torch.float32).view(-1, 1, 2, 2)
    return ClassDataset.from_tensors(x, torch.arange(CLASSES * PER_CLASS) // PER_CLASS).with_augmentation(Rotations())


def decode(images: torch.Tensor, data: ClassDataset) -> tuple[np.ndarray, np.ndarray]:
    """(augmented class, example row) of each 1x2x2 image."""
    classes, rows = [], []
    for image in images:
        row = int(image.min()) // 4
        (k,) = [k for k in range(4) if torch.equal(torch.rot90(data.x[row], k, dims=(-2, -1)), image)]
        classes.append(row // PER_CLASS * 4 + k)
        rows.append(row)
    return np.array(classes), np.array(rows)


def test_pair_is_pure_function_of_seed_and_index(rotated):
    sampler = PairSampler(rotated, seed=5)
    big = sampler.sample(range(40))
    for i in (0, 17, 39):
        single = sampler.sample([i])
        assert torch.equal(single.x1[0], big.x1[i]) and torch.equal(single.x2[0], big.x2[i])
        assert single.same[0] == big.same[i]
    shuffled = sampler.sample([39, 17, 0])
    assert torch.equal(shuffled.x2, big.x2[[39, 17, 0]]) and shuffled.indices.tolist() == [39, 17, 0]
    assert torch.equal(batch_at(sampler, 1, 20).x1, big.x1[20:])
    again = PairSampler(rotated, seed=5).sample(range(40))
    assert torch.equal(again.x1, big.x1) and torch.equal(again.same, big.same)
    other = PairSampler(rotated, seed=6).sample(range(40))
    assert not torch.equal(other.x1, big.x1)


def test_labels_distinct_examples_and_rotations(rotated):
    sampler = PairSampler(rotated, seed=1)
    pairs = sampler.sample(range(300))
    class1, row1 = decode(pairs.x1, rotated)
    class2, row2 = decode(pairs.x2, rotated)
    same = pairs.same.numpy().astype(bool)
    assert np.array_equal(class1 == class2, same)  # rotated copies are other classes
    assert (row1[same] != row2[same]).all()  # a same pair holds two distinct examples
    assert ((class1 % 4 != class2 % 4) & (class1 // 4 == class2 // 4))[~same].any()
    assert len(set(class1.tolist())) == CLASSES * 4  # every augmented class occurs
    assert pairs.same.dtype == torch.float32 and set(pairs.same.tolist()) == {0.0, 1.0}
    sampler._precomputed = False  # the transform-per-batch path gives the same pairs
    assert torch.equal(sampler.sample(range(300)).x2, pairs.x2)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_same_fraction(rotated, fraction):
    same = PairSampler(rotated, seed=3, same_fraction=fraction).sample(range(2000)).same
    assert abs(same.mean().item() - fraction) < 0.04


def test_source_attributes_and_batch(rotated):
    sampler = PairSampler(rotated, seed=2)
    assert isinstance(sampler, TaskSource)
    assert sampler.spec == TaskSpec(2, 1, 1) and sampler.seed == 2
    pairs = sampler.sample(range(4))
    assert len(pairs) == 4 and pairs.query_y.tolist() == [[int(s)] for s in pairs.same.tolist()]
    moved = pairs.to("cpu", torch.float64)
    assert moved.x1.dtype == torch.float64 and moved.indices.dtype == torch.int64


def test_validation(rotated):
    with pytest.raises(ValueError, match=r"same_fraction must lie in \[0, 1\], got 1.5"):
        PairSampler(rotated, same_fraction=1.5)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        PairSampler(rotated, seed=-1)
    lonely = ClassDataset.from_tensors(torch.randn(5, 3), torch.tensor([0, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match=r"2 examples per class; 1 class\(es\) have 1: '1'"):
        PairSampler(lonely)
    with pytest.raises(ValueError, match="different pairs need 2 classes, the dataset has 1"):
        PairSampler(ClassDataset.from_tensors(torch.randn(3, 2), torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="episode indices must be >= 0"):
        PairSampler(rotated).sample([-1])
    with pytest.raises(ValueError, match=r"x1 \(2, 3\) and x2 \(2, 4\) must have the same shape"):
        PairBatch(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"same must have shape \(2,\), got \(3,\)"):
        PairBatch(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
