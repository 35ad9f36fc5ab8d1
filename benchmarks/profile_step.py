"""Where a training step of a benchmark config spends its time: ``torch.profiler`` by operator.

    python benchmarks/profile_step.py maml-20w1s-5steps [--variant default|threads|fast|lean|plain]
        [--threads 1] [--steps 2] [--rows 20]

Builds the config's learner exactly as ``benchmarks/peers`` does (``fastadapt.bench``:
same Conv-4, seeded synthetic batches, ``tune_allocator``), runs two warm-up steps
(meta-gradient only, no outer update), then profiles ``--steps`` steps and prints the
operators by self CPU time, followed by the share of the step spent under a few
autograd nodes of interest (BatchNorm's and the convolution's backward and double
backward: inclusive times, so nested calls count once per node). The variants are those of
``benchmarks/peers`` (``default`` = fastadapt, ``threads``, ``fast``, ``lean``, ``plain``). With more than one thread or worker the
profiler sees the calling thread's work only.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fastadapt.bench import CONFIGS, build_backbone, synthetic_batch
from fastadapt.runtime import tune_allocator

NODES = (
    "NativeBatchNormBackwardBackward0",
    "autograd::engine::evaluate_function: NativeBatchNormBackward0",
    "autograd::engine::evaluate_function: ConvolutionBackward0",
    "autograd::engine::evaluate_function: ConvolutionBackwardBackward0",
)


# The variants of ``benchmarks/peers`` (the modules ``run.py`` loads), under short names.
VARIANTS = {"default": "fastadapt_side", "threads": "fastadapt_threads", "fast": "fastadapt_fast", "lean": "fastadapt_lean", "plain": "plain_torch"}


def make_backward(variant: str):
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    return lambda config, backbone: importlib.import_module(VARIANTS[variant]).BACKWARD[config.algorithm](config, backbone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--variant", default="default", choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    backward = make_backward(args.variant)(config, build_backbone(config))
    batch = synthetic_batch(config, 0)
    for _ in range(2):
        backward(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            backward(batch)
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    for node in NODES:
        inclusive = sum(e.cpu_time_total for e in averages if e.key == node)
        print(f"{inclusive / total:6.1%}  {node}")
    print(f"{args.config}, {args.variant}, {args.threads} thread(s): {total / args.steps / 1e3:.0f} ms of CPU time a step")


if __name__ == "__main__":
    main()
