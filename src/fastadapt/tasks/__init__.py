"""Episodic task layer: task specs, episodes, seeded samplers and task distributions."""

from fastadapt.tasks.pairs import PairBatch, PairSampler
from fastadapt.tasks.sampler import (
    EpisodeSampler,
    TaskSource,
    batch_at,
    choose_distinct,
    iter_episodes,
)
from fastadapt.tasks.sinusoid import SinusoidTasks
from fastadapt.tasks.spec import Episode, EpisodeBatch, TaskSpec

__all__ = [
    "Episode",
    "EpisodeBatch",
    "EpisodeSampler",
    "PairBatch",
    "PairSampler",
    "SinusoidTasks",
    "TaskSource",
    "TaskSpec",
    "batch_at",
    "choose_distinct",
    "iter_episodes",
]
