"""fastadapt in float32 with only ``task_workers`` = the benchmark's threads (exact arithmetic).

The tasks of a meta-batch are split over that many threads, each with one intra-op thread
(``fastadapt.task_parallel``); ProtoNet's single episode per step has nothing to split.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from fastadapt.algorithms import create_algorithm
from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks.spec import EpisodeBatch

NOTE = "fastadapt, algorithm.args.task_workers=threads (float32)"


def threads_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    learner = create_algorithm(config.algorithm, backbone, **config.algorithm_args, task_workers=torch.get_num_threads())

    def backward(batch: EpisodeBatch) -> None:
        learner.meta_loss(batch).loss.backward()

    return backward


BACKWARD = {"maml": threads_backward, "reptile": threads_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
