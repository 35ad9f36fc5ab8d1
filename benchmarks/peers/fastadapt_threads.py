"""fastadapt in float32 with only ``task_workers`` = the benchmark's threads (exact arithmetic).

The tasks of a meta-batch are split over that many threads, each with one intra-op thread
(``fastadapt.task_parallel``); ProtoNet's single episode per step has nothing to split.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from fastadapt.bench import Backward, BenchConfig, learner_backward

NOTE = "fastadapt, algorithm.args.task_workers=threads (float32)"


def threads_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    return learner_backward(config, backbone, task_workers=torch.get_num_threads())


BACKWARD = {"maml": threads_backward, "reptile": threads_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
