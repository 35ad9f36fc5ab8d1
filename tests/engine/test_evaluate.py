import pytest
import torch

from fastadapt.engine import evaluate
from fastadapt.functional import mean_ci95
from fastadapt.tasks import EpisodeSampler, SinusoidTasks, TaskSpec


def oracle(support_x, support_y, query_x):
    """Nearest support example by value: exact on the toy data where classes are far apart."""
    distance = (query_x.flatten(2)[:, :, None] // 1000 - support_x.flatten(2)[:, None] // 1000).abs().sum(-1)
    nearest = distance.argmin(-1)  # (B, Q)
    labels = torch.gather(support_y, 1, nearest)
    return torch.nn.functional.one_hot(labels, int(support_y.max()) + 1).float()


def test_oracle_scores_100_and_batch_size_does_not_matter(toy_dataset):
    sampler = EpisodeSampler(toy_dataset, TaskSpec(5, 1, 3), seed=0)
    result = evaluate(oracle, sampler, episodes=50, batch_size=7, bn_policy="none")
    assert result.mean == 1.0 and result.ci95 == 0.0 and result.n == 50
    assert str(result) == "accuracy = 100.00 ± 0.00 % (n=50 episodes, 5-way 1-shot 3-query, BN: none)"


def test_chance_predictor_matches_mean_ci95(toy_dataset):
    sampler = EpisodeSampler(toy_dataset, TaskSpec(4, 1, 3), seed=1)

    def constant(support_x, support_y, query_x):
        return torch.zeros(query_x.shape[0], query_x.shape[1], 4).index_fill_(2, torch.tensor([0]), 1.0)

    a = evaluate(constant, sampler, episodes=40, batch_size=40)
    b = evaluate(constant, sampler, episodes=40, batch_size=3)
    assert a.mean == pytest.approx(0.25) and torch.equal(a.per_episode, b.per_episode)
    assert a.ci95 == pytest.approx(mean_ci95(a.per_episode).ci95)


def test_regression_mse_and_no_grad():
    tasks = SinusoidTasks(shots=5, seed=0)

    def zero(support_x, support_y, query_x):
        assert not torch.is_grad_enabled()
        return torch.zeros_like(query_x)

    result = evaluate(zero, tasks, episodes=30, metric="mse")
    expected = tasks.sample(range(30)).query_y.pow(2).mean((1, 2))
    assert result.mean == pytest.approx(expected.mean().item(), rel=1e-5)
    assert str(result).startswith("mse = ")


def test_evaluate_validation(toy_dataset):
    sampler = EpisodeSampler(toy_dataset, TaskSpec(2, 1, 1))
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        evaluate(oracle, sampler, 5, metric="acc")
    with pytest.raises(ValueError, match="episodes must be a positive int"):
        evaluate(oracle, sampler, 0)
