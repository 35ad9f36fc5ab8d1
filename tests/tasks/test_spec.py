import pytest
import torch

from fastadapt.tasks import Episode, EpisodeBatch, TaskSpec


def make_batch(tasks: int = 3, spec: TaskSpec = TaskSpec(2, 1, 3)) -> EpisodeBatch:
    return EpisodeBatch(
        support_x=torch.randn(tasks, spec.ways * spec.shots, 4),
        support_y=torch.arange(spec.ways).repeat_interleave(spec.shots).repeat(tasks, 1),
        query_x=torch.randn(tasks, spec.ways * spec.queries, 4),
        query_y=torch.arange(spec.ways).repeat_interleave(spec.queries).repeat(tasks, 1),
        spec=spec,
        classes=torch.arange(tasks * spec.ways).view(tasks, spec.ways),
        extras={"a": torch.arange(tasks)},
        indices=torch.arange(tasks),
    )


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0, 1, 1), ValueError, "ways must be >= 1, got 0"),
        ((5, 0, 1), ValueError, "shots must be >= 1, got 0"),
        ((5, 1, 0), ValueError, "queries must be >= 1, got 0"),
        ((5.0, 1, 1), TypeError, "ways must be an int, got 5.0"),
        ((5, True, 1), TypeError, "shots must be an int"),
    ],
)
def test_taskspec_validation(args, error, match):
    with pytest.raises(error, match=match):
        TaskSpec(*args)


def test_taskspec_str_and_per_class():
    spec = TaskSpec(5, 1, 15)
    assert str(spec) == "5-way 1-shot 15-query"
    assert spec.per_class == 16


def test_batch_shape_validation():
    good = make_batch()
    with pytest.raises(ValueError, match="support_x holds 3 examples per task, expected ways\\*shots = 2"):
        EpisodeBatch(torch.zeros(3, 3, 4), good.support_y, good.query_x, good.query_y, good.spec)
    with pytest.raises(ValueError, match="query_y has 2 tasks but support_x has 3"):
        EpisodeBatch(good.support_x, good.support_y, good.query_x, good.query_y[:2], good.spec)


def test_getitem_stack_roundtrip():
    batch = make_batch()
    episodes = list(batch)
    assert len(episodes) == 3 and isinstance(episodes[0], Episode)
    again = EpisodeBatch.stack(episodes)
    for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
        assert torch.equal(getattr(again, name), getattr(batch, name))
    assert torch.equal(again.extras["a"], batch.extras["a"])


def test_concat_slice_and_to():
    batch = make_batch(4)
    parts = [batch.slice(0, 1), batch.slice(1, 4)]
    whole = EpisodeBatch.concat(parts)
    assert torch.equal(whole.query_x, batch.query_x) and torch.equal(whole.indices, batch.indices)
    double = batch.to("cpu", dtype=torch.float64)
    assert double.support_x.dtype == torch.float64 and double.support_y.dtype == torch.int64


def test_concat_refuses_mixed_specs():
    with pytest.raises(ValueError, match="different specs"):
        EpisodeBatch.concat([make_batch(), make_batch(spec=TaskSpec(3, 1, 3))])
    with pytest.raises(ValueError, match="empty"):
        EpisodeBatch.stack([])
