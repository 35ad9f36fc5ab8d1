"""fastadapt with its speed options, one override each in a recipe (README "Speed settings").

MAML: ``precision="bfloat16"`` (query passes under bfloat16 autocast, inner loop float32).
ProtoNet: ``precision="bfloat16"`` and ``train.channels_last`` (parameters NHWC).
Reptile has no reduced-precision option, so this variant skips it.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from fastadapt.algorithms import create_algorithm
from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks.spec import EpisodeBatch

NOTE = "fastadapt with algorithm.args.precision=bfloat16 (+ train.channels_last for ProtoNet)"


def fast_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    learner = create_algorithm(config.algorithm, backbone, **config.algorithm_args, precision="bfloat16")
    if config.algorithm == "protonet":
        learner.to(memory_format=torch.channels_last)  # what train.channels_last does

    def backward(batch: EpisodeBatch) -> None:
        learner.meta_loss(batch).loss.backward()

    return backward


BACKWARD = {"maml": fast_backward, "protonet": fast_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
