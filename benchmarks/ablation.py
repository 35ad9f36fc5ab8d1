"""One learner option at a time: training-step time of a benchmark config with and without it.

    python benchmarks/ablation.py CONFIG --base key=value ... --variant NAME key=value ... [--variant ...]
        [--threads 2] [--steps 10] [--repeats 2] [--pool] [--alternate]

Each variant is the base options plus its own (values parsed as Python literals where they
can be: ``2``, ``True``, ``"bfloat16"``; ``channels_last=True`` means ``train.channels_last``),
timed with ``fastadapt.bench.measure`` (same Conv-4, seeded synthetic batches, warm-up excluded,
``tune_allocator``; ``--pool``: and the tensor pool, as the engine and the peers run's ``shipped``
setting) in a fresh process per variant and repeat, the repeats interleaved so a
change of machine load hits every variant alike. Prints each variant's median step over the
repeats and its ratio to the first variant; appends rows to ``results/ablation.jsonl``.

``--alternate``: all variants in one process per repeat, taking steps in turn (the order rotated
every step), so that a VM whose speed drifts within seconds slows them alike: for an option
worth a few per cent. Their peak RSS is then the process's, not each variant's (recorded as null).

Example (the MAML speed settings with and without NHWC query passes)::

    python benchmarks/ablation.py maml-5w1s-1st --base task_workers=2 precision=bfloat16 \\
        --variant nchw --variant query-nhwc query_channels_last=True
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from common import append_row, environment
from torch import nn

from fastadapt.bench import CONFIGS, Backward, BenchConfig, TrainingStep, learner_backward, measure
from fastadapt.runtime import tune_allocator
from fastadapt.tensor_pool import use_tensor_pool


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=True", "c=bfloat16"]`` -> ``{"a": 1, "b": True, "c": "bfloat16"}``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _prepare(threads: int, pool: bool) -> None:
    """A child process's allocator (``tune_allocator``, ``--pool``: the tensor pool) and threads."""
    tune_allocator()
    if pool and not use_tensor_pool():
        raise RuntimeError("--pool needs fastadapt's C++ extension, which cannot be built here")
    torch.set_num_threads(threads)


def _learner(options: dict[str, Any]) -> Callable[[BenchConfig, nn.Module], Backward]:
    return lambda config, backbone: learner_backward(config, backbone, **options)


def child(config: str, options: dict[str, Any], threads: int, steps: int, pool: bool = False) -> dict[str, Any]:
    _prepare(threads, pool)
    m = measure(CONFIGS[config], _learner(options), steps=steps, warmup=2)
    return {"median_s": statistics.median(m.times), "min_s": min(m.times), "peak_rss_mb": m.peak_rss_mb}


def alternate_child(config: str, variants: dict[str, dict[str, Any]], threads: int, steps: int,
                    pool: bool = False) -> dict[str, dict[str, Any]]:
    """``child`` for all ``variants`` in this process, one step of each in turn (two untimed first)."""
    _prepare(threads, pool)
    stepper = {name: TrainingStep(CONFIGS[config], _learner(options), 4) for name, options in variants.items()}
    names, times = list(variants), {name: [] for name in variants}
    for i in range(2 + steps):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            start = time.perf_counter()
            stepper[name](i)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "peak_rss_mb": None} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=sorted(CONFIGS))
    parser.add_argument("--base", nargs="*", default=[])
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pool", action="store_true", help="fastadapt's tensor pool as well (the engine's default)")
    parser.add_argument("--alternate", action="store_true", help="all variants in one process, steps in turn")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        work = alternate_child if args.alternate else child
        print(json.dumps(work(args.config, json.loads(args.child), args.threads, args.steps, args.pool)))
        return
    base = parse_options(args.base)
    variants = {name: base | parse_options(pairs) for name, *pairs in args.variant}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    flags = ["--threads", str(args.threads), "--steps", str(args.steps)] + ["--pool"] * args.pool
    for _ in range(args.repeats):
        if args.alternate:
            command = [sys.executable, __file__, args.config, "--variant", "all", "--alternate", *flags,
                       "--child", json.dumps(variants)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            for name, result in json.loads(done.stdout.strip().splitlines()[-1]).items():
                runs[name].append(result)
            continue
        for name, options in variants.items():
            command = [sys.executable, __file__, args.config, "--variant", name, *flags, "--child", json.dumps(options)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = None
    for name, results in runs.items():
        median = statistics.median(r["median_s"] for r in results)
        first = first or median
        rss = None if args.alternate else max(r["peak_rss_mb"] for r in results)
        memory = "   (one process)" if rss is None else f"{rss:6.0f} MB"
        print(f"{args.config:20s} {name:16s} {median * 1e3:8.1f} ms  x{first / median:4.2f}  {memory}  {variants[name]}")
        append_row("ablation", environment() | {
            "config": args.config, "variant": name, "options": variants[name], "median_s": median,
            "repeat_medians_s": [r["median_s"] for r in results], "peak_rss_mb": rss, "speedup_vs_first": first / median,
            "steps": args.steps, "repeats": args.repeats, "threads": args.threads, "pool": args.pool,
            "alternate": args.alternate,
        })


if __name__ == "__main__":
    main()
