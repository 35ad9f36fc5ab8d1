import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastadapt.data.base import ClassDataset, Rotations
from fastadapt.tasks import EpisodeSampler, TaskSpec, batch_at, choose_distinct, iter_episodes


def digest(batch) -> str:
    h = hashlib.sha256()
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def decode(x):
    """Toy examples encode class * 1000 + index."""
    value = x.squeeze(-1).long()
    return value // 1000, value % 1000


def test_episode_is_pure_function_of_seed_and_index(toy_dataset):
    sampler = EpisodeSampler(toy_dataset, TaskSpec(4, 2, 3), seed=7)
    big = sampler.sample(range(10))
    for i in (0, 3, 9):
        single = sampler.episode(i)
        assert torch.equal(single.support_x, big.support_x[i])
        assert torch.equal(single.query_x, big.query_x[i])
    shuffled = sampler.sample([9, 3, 0])
    assert torch.equal(shuffled.query_x[0], big.query_x[9])
    assert torch.equal(shuffled.indices, torch.tensor([9, 3, 0]))
    # batch_at with different batch sizes addresses the same episodes
    assert torch.equal(batch_at(sampler, 1, 5).support_x, big.support_x[5:10])
    chunks = list(iter_episodes(sampler, 0, 10, batch_size=3))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert torch.equal(torch.cat([c.query_x for c in chunks]), big.query_x)


def test_different_seeds_differ(toy_dataset):
    a = EpisodeSampler(toy_dataset, TaskSpec(4, 2, 3), seed=1).sample(range(5))
    b = EpisodeSampler(toy_dataset, TaskSpec(4, 2, 3), seed=2).sample(range(5))
    assert not torch.equal(a.classes, b.classes)


SCRIPT = """
import hashlib, torch
from fastadapt.data.base import ClassDataset, Rotations
from fastadapt.tasks import EpisodeSampler, TaskSpec
x = torch.arange(40 * 7 * 4, dtype=torch.float32).view(40 * 7, 1, 2, 2)
data = ClassDataset.from_tensors(x, torch.arange(40 * 7) // 7).with_augmentation(Rotations())
b = EpisodeSampler(data, TaskSpec(5, 2, 3), seed=11).sample(range(20, 36))
h = hashlib.sha256()
for t in (b.support_x, b.support_y, b.query_x, b.query_y, b.classes):
    h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_same_episodes_in_another_process():
    x = torch.arange(40 * 7 * 4, dtype=torch.float32).view(40 * 7, 1, 2, 2)
    data = ClassDataset.from_tensors(x, torch.arange(40 * 7) // 7).with_augmentation(Rotations())
    here = digest(EpisodeSampler(data, TaskSpec(5, 2, 3), seed=11).sample(range(20, 36)))
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


@pytest.mark.parametrize("spec", [TaskSpec(5, 1, 5), TaskSpec(12, 2, 4), TaskSpec(3, 5, 1)])
def test_support_query_disjoint_and_labels(toy_dataset, spec):
    sampler = EpisodeSampler(toy_dataset, spec, seed=3)
    batch = sampler.sample(range(50))
    s_cls, s_idx = decode(batch.support_x)
    q_cls, q_idx = decode(batch.query_x)
    for t in range(len(batch)):
        # classes distinct, and each label maps to exactly one source class
        assert len(set(batch.classes[t].tolist())) == spec.ways
        assert torch.equal(s_cls[t], batch.classes[t][batch.support_y[t]])
        assert torch.equal(q_cls[t], batch.classes[t][batch.query_y[t]])
        support = set(zip(s_cls[t].tolist(), s_idx[t].tolist()))
        query = set(zip(q_cls[t].tolist(), q_idx[t].tolist()))
        assert len(support) == spec.ways * spec.shots and len(query) == spec.ways * spec.queries
        assert not support & query
    assert batch.support_y.min() == 0 and batch.support_y.max() == spec.ways - 1
    assert batch.support_y.dtype == torch.int64


def test_label_assignment_is_random(image_dataset):
    batch = EpisodeSampler(image_dataset, TaskSpec(5, 1, 1), seed=0).sample(range(400))
    # which class gets label 0 must vary: the smallest class id is at label 0 about 1/5 of the time
    first_is_min = (batch.classes.argmin(1) == 0).float().mean().item()
    assert 0.12 < first_is_min < 0.28


def test_class_and_example_frequencies_are_uniform(image_dataset):
    batch = EpisodeSampler(image_dataset, TaskSpec(5, 2, 3), seed=5).sample(range(3000))
    counts = torch.bincount(batch.classes.flatten(), minlength=30).double()
    expected = 3000 * 5 / 30
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 70  # 29 degrees of freedom: p < 1e-4 above 60


def test_choose_distinct_paths_are_uniform_and_distinct():
    for high, k in [(1000, 5), (8, 5), (5, 5)]:
        rows = 4000
        out = choose_distinct(np.full(rows, high), k, 3, 1, np.arange(rows))
        assert out.shape == (rows, k) and out.min() >= 0 and out.max() < high
        assert all(len(set(r)) == k for r in out[:500].tolist())
        first = np.bincount(out[:, 0], minlength=high) / rows
        assert np.abs(first - 1 / high).max() < 5 * np.sqrt(1 / high / rows) + 1e-3
    # per-row bounds
    out = choose_distinct(np.array([3, 50, 7]), 3, 0, 0, np.arange(3))
    assert out[0].max() < 3 and out[2].max() < 7


def test_too_small_classes_are_named(toy_dataset):
    with pytest.raises(ValueError) as info:
        EpisodeSampler(toy_dataset, TaskSpec(3, 4, 4), seed=0)
    message = str(info.value)
    assert "needs 8 examples per class" in message
    assert "'0' (6)" in message and "'1' (7)" in message and "2 classes have fewer" in message
    sampler = EpisodeSampler(toy_dataset, TaskSpec(3, 4, 4), seed=0, drop_small_classes=True)
    assert sampler.num_classes == 10
    assert decode(sampler.sample(range(30)).support_x)[0].min() >= 2


def test_not_enough_classes():
    data = ClassDataset.from_tensors(torch.zeros(12, 1), torch.arange(12) // 4)
    with pytest.raises(ValueError, match="needs 5 classes .* the dataset has 3"):
        EpisodeSampler(data, TaskSpec(5, 1, 1))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(toy_dataset, seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        EpisodeSampler(toy_dataset, TaskSpec(2, 1, 1), seed=seed)


@pytest.mark.parametrize("indices", [[], [-1], [[0, 1]], [0.5]])
def test_bad_indices(toy_dataset, indices):
    with pytest.raises(ValueError, match="episode indices"):
        EpisodeSampler(toy_dataset, TaskSpec(2, 1, 1)).sample(indices)


def test_rotations_are_classes(image_dataset):
    data = image_dataset.with_augmentation(Rotations())
    assert data.num_classes == 120
    sampler = EpisodeSampler(data, TaskSpec(5, 1, 2), seed=4)
    lazy = EpisodeSampler(data, TaskSpec(5, 1, 2), seed=4, precompute_augmentation=False)
    batch, batch_lazy = sampler.sample(range(40)), lazy.sample(range(40))
    assert torch.equal(batch.support_x, batch_lazy.support_x)
    assert torch.equal(batch.query_x, batch_lazy.query_x)
    # every support image is a rotation by 90 * (class % 4) of some original image
    originals = image_dataset.x.flatten(1)
    for t in range(10):
        for j, cls in enumerate(batch.classes[t].tolist()):
            base, k = divmod(cls, 4)
            unrotated = torch.rot90(batch.support_x[t, j], -k, dims=(-2, -1)).flatten()
            match = (originals == unrotated).all(1).nonzero().flatten()
            assert len(match) == 1 and int(match) // 20 == base
    assert data.class_name(7) == "1/rot90x3"


def test_from_tensors_sampler():
    sampler = EpisodeSampler.from_tensors(torch.randn(50, 3), torch.arange(50) % 5, TaskSpec(5, 2, 2))
    assert sampler.sample([0]).support_x.shape == (1, 10, 3)
