"""Where one task's live tensor memory peaks, ATen op by ATen op (issue 6: what a task's graph holds).

    /work/bench-venv/bin/python benchmarks/live_peak.py maml-5w1s-2nd fastadapt_lean [--tasks 1] [--around 12]
    /work/bench-venv/bin/python benchmarks/live_peak.py maml-5w1s-2nd options --set query_channels_last=True ...

Runs ``config`` with ``--tasks`` tasks per meta-batch (1: one task's graph) through the
``benchmarks/peers`` module ``variant`` (or, for ``options``, the learner with the ``--set`` arguments,
parsed as in ``benchmarks/ablation.py``), under fastadapt's tensor pool (so every tensor of at least
64 KiB is counted exactly) and ``tune_allocator``, 2 threads: two warm-up steps, then one step
under a ``TorchDispatchMode`` that restarts the pool's peak before every ATen call
(``fastadapt.tensor_pool.reset_peak``) and reads it and the live bytes after. Prints the step's
peak of live bytes after an op and within one, the ops that allocated and freed 1 MiB or more inside
(temporaries), and the ops around the peak with the change each made.
Not recorded in results/: the figures in ``benchmarks/README.md`` quote it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "peers"), str(HERE)]

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from ablation import parse_options  # noqa: E402
from common import with_tensor_pool  # noqa: E402

from fastadapt.bench import CONFIGS, build_backbone, learner_backward, set_threads, synthetic_batch  # noqa: E402
from fastadapt.tensor_pool import pool_stats, reset_peak  # noqa: E402

MB = 2**20


class LiveBytes(TorchDispatchMode):
    """Records ``(op, live bytes after it, the op's own peak above both ends, input shapes)``: the
    pool's peak is restarted before every op, so a temporary an op allocates and frees shows."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int, int, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        reset_peak()
        before = pool_stats()["live_bytes"]
        out = func(*args, **(kwargs or {}))
        after = pool_stats()
        inside = after["peak_live_bytes"] - max(before, after["live_bytes"])
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((str(func), after["live_bytes"], inside, shapes))
        return out


def trace(config_name: str, variant: str, tasks: int, options: dict[str, Any]) -> tuple[int, LiveBytes]:
    """The live bytes before the traced step and the trace of that step."""
    config = dataclasses.replace(CONFIGS[config_name], tasks=tasks)
    backbone = build_backbone(config)
    if variant == "options":
        backward = learner_backward(config, backbone, **options)
    else:
        backward = importlib.import_module(variant).BACKWARD[config.algorithm](config, backbone)
    batch = synthetic_batch(config, 0)
    for _ in range(2):
        backward(batch)
        for p in backbone.parameters():
            p.grad = None
    base, mode = pool_stats()["live_bytes"], LiveBytes()
    with mode:
        backward(batch)
    return base, mode


def report(base: int, mode: LiveBytes, around: int) -> list[str]:
    ops = mode.ops
    peak = max(range(len(ops)), key=lambda i: ops[i][1])
    within = max(range(len(ops)), key=lambda i: ops[i][1] + ops[i][2])
    lines = [f"{len(ops)} ops; live before the step {base / MB:.2f} MB; peak after an op "
             f"{(ops[peak][1] - base) / MB:.2f} MB above it, at op {peak} ({ops[peak][0]}); peak within an op "
             f"{(ops[within][1] + ops[within][2] - base) / MB:.2f} MB, in op {within} ({ops[within][0]})"]
    lines += [f"  op {i} {name} {shapes[:2]} allocated and freed {inside / MB:.2f} MB inside "
              f"(live after it {(live - base) / MB:.2f} MB)"
              for i, (name, live, inside, shapes) in enumerate(ops) if inside >= 2**20]
    previous = ops[max(0, peak - around) - 1][1] if peak - around > 0 else base
    for i in range(max(0, peak - around), min(len(ops), peak + around // 2)):
        name, live, _, shapes = ops[i]
        lines.append(f"  {i:4d} {name:45s} {(live - base) / MB:7.2f} MB ({(live - previous) / MB:+.2f}) {shapes[:2]}")
        previous = live
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("variant", help="a module of benchmarks/peers, e.g. fastadapt_lean")
    parser.add_argument("--tasks", type=int, default=1, help="tasks per meta-batch (default 1: one task's graph)")
    parser.add_argument("--around", type=int, default=12, help="ops shown before the peak (half as many after)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="learner arguments (variant 'options')")
    args: Any = parser.parse_args(argv)
    with_tensor_pool()
    set_threads(2)
    base, mode = trace(args.config, args.variant, args.tasks, parse_options(args.set))
    print("\n".join(report(base, mode, args.around)))


if __name__ == "__main__":
    main()
