import math

import pytest
import torch

from fastadapt.tasks import SinusoidTasks


def test_shapes_and_function():
    tasks = SinusoidTasks(shots=10, seed=0)
    batch = tasks.sample(range(25))
    assert batch.support_x.shape == (25, 10, 1) and batch.query_y.shape == (25, 10, 1)
    a, p = batch.extras["amplitude"], batch.extras["phase"]
    expected = a[:, None, None] * torch.sin(batch.support_x - p[:, None, None])
    torch.testing.assert_close(batch.support_y, expected)
    assert batch.spec.ways == 1 and batch.spec.shots == 10 and batch.spec.queries == 10


def test_parameter_ranges_match_the_paper():
    batch = SinusoidTasks(shots=5, queries=20, seed=1).sample(range(4000))
    a, p, x = batch.extras["amplitude"], batch.extras["phase"], batch.query_x
    assert 0.1 <= a.min() and a.max() <= 5.0 and 0.0 <= p.min() and p.max() <= math.pi
    assert -5.0 <= x.min() and x.max() <= 5.0
    # uniform: means and spreads of U[0.1, 5], U[0, pi], U[-5, 5]
    assert abs(a.mean().item() - 2.55) < 0.06 and abs(p.mean().item() - math.pi / 2) < 0.04
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - 100 / 12) < 0.2


def test_determinism_and_independence():
    tasks = SinusoidTasks(shots=10, seed=3)
    a, b = tasks.sample(range(8)), tasks.sample([5])
    assert torch.equal(a.support_x[5], b.support_x[0]) and torch.equal(a.query_y[5], b.query_y[0])
    other = SinusoidTasks(shots=10, seed=4).sample(range(8))
    assert not torch.equal(a.support_x, other.support_x)


def test_validation():
    with pytest.raises(ValueError, match="amplitude must be an interval"):
        SinusoidTasks(amplitude=(5.0, 0.1))
    with pytest.raises(ValueError, match="seed"):
        SinusoidTasks(seed=-3)
