"""fastadapt with its speed options, one override each in a recipe (README "Speed settings").

MAML: ``precision="bfloat16"`` (query passes under bfloat16 autocast, inner loop float32) and
``task_workers`` = the benchmark's threads (tasks split over threads, one intra-op thread each).
ProtoNet: ``precision="bfloat16"`` and ``train.channels_last`` (parameters NHWC); its one
episode per step has no tasks to split. Reptile: ``task_workers`` (it has no reduced precision).
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from fastadapt.algorithms import create_algorithm
from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks.spec import EpisodeBatch

NOTE = "fastadapt, algorithm.args.precision=bfloat16 (MAML, ProtoNet), task_workers=threads (MAML, Reptile), train.channels_last (ProtoNet)"


def speed_options(config: BenchConfig) -> dict[str, object]:
    """The algorithm arguments this variant adds to ``config.algorithm_args``."""
    workers = {"task_workers": torch.get_num_threads()}
    return {"maml": {"precision": "bfloat16"} | workers, "protonet": {"precision": "bfloat16"}, "reptile": workers}[
        config.algorithm
    ]


def fast_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    learner = create_algorithm(config.algorithm, backbone, **config.algorithm_args, **speed_options(config))
    if config.algorithm == "protonet":
        learner.to(memory_format=torch.channels_last)  # what train.channels_last does

    def backward(batch: EpisodeBatch) -> None:
        learner.meta_loss(batch).loss.backward()

    return backward


BACKWARD = {"maml": fast_backward, "protonet": fast_backward, "reptile": fast_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
