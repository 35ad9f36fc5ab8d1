"""Episode-sampling throughput on real Omniglot, and cold vs cached load time.

    python benchmarks/sampling.py [--data-dir DIR] [--repeats 300]

Runs each variant in a fresh subprocess (default glibc malloc, then malloc tuned to
keep freed memory), appends JSON rows to ``benchmarks/results/sampling.jsonl`` and
prints the Markdown table of the latest rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from common import TUNED_MALLOC, append_row, environment

CONFIGS = [  # (ways, shots, queries, meta-batch)
    (5, 1, 15, 32),
    (20, 5, 5, 32),
]


def measure(data_dir: str | None, repeats: int, mallopt: bool) -> None:
    """Child process: time loading and sampling, print one JSON object per figure."""
    from fastadapt.data.omniglot import load_omniglot
    from fastadapt.runtime import tune_allocator

    if mallopt and not tune_allocator():
        raise SystemExit("fastadapt.runtime.tune_allocator had no effect (not glibc?)")
    from fastadapt.tasks import EpisodeSampler, TaskSpec

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_omniglot(split="vinyals", partition="train", data_dir=data_dir, cache_dir=cache)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        train = load_omniglot(split="vinyals", partition="train", rotations=True, data_dir=data_dir, cache_dir=cache)
        cached = time.perf_counter() - start
    print(json.dumps({"figure": "load", "cold_s": cold, "cached_s": cached}))
    for ways, shots, queries, batch in CONFIGS:
        sampler = EpisodeSampler(train, TaskSpec(ways, shots, queries), seed=0)
        for step in range(5):  # warm-up, builds the rotation table
            sampler.sample(np.arange(step * batch, (step + 1) * batch))
        times = []
        for step in range(repeats):
            start = time.perf_counter()
            sampler.sample(np.arange(step * batch, (step + 1) * batch))
            times.append(time.perf_counter() - start)
        t = np.array(times)
        # The floor: one bare gather of the same number of random rows from the same table.
        table = train.augmented
        rows = batch * ways * (shots + queries)
        floor = []
        for step in range(50):
            index = torch.from_numpy(np.random.default_rng(step).integers(0, len(table), rows))
            start = time.perf_counter()
            table.index_select(0, index)
            floor.append(time.perf_counter() - start)
        print(json.dumps({
            "figure": "sampling", "ways": ways, "shots": shots, "queries": queries, "batch": batch,
            "classes": sampler.num_classes, "episodes_per_s": batch * repeats / t.sum(),
            "median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(t.min()), "max_ms": 1e3 * float(t.max()),
            "bare_gather_ms": 1e3 * float(np.median(floor)), "megabytes": rows * table[0].nbytes / 1e6,
        }))


def table(rows: list[dict]) -> str:
    lines = [
        "| config | malloc | episodes/s | median ms / meta-batch | bare gather of the same rows, ms (MB) | classes | commit |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["figure"] == "sampling":
            lines.append(
                f"| {r['ways']}w{r['shots']}s{r['queries']}q x{r['batch']} | {r['malloc']} | "
                f"{r['episodes_per_s']:,.0f} | {r['median_ms']:.2f} | "
                f"{r.get('bare_gather_ms', float('nan')):.2f} ({r.get('megabytes', float('nan')):.1f}) | {r['classes']} | {r['commit']} |"
            )
    lines += ["", "| load | malloc | cold (decode + cache) s | cached s | commit |", "| --- | --- | ---: | ---: | --- |"]
    for r in rows:
        if r["figure"] == "load":
            lines.append(f"| omniglot vinyals/train | {r['malloc']} | {r['cold_s']:.2f} | {r['cached_s']:.3f} | {r['commit']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.data_dir, args.repeats, args.mallopt)
        return
    latest = []
    # default glibc malloc; tuned through the environment; tuned by fastadapt.runtime.tune_allocator
    for malloc in ("default", "tuned", "tune_allocator"):
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
        if malloc == "tuned":
            env.update(TUNED_MALLOC)
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
        if malloc == "tune_allocator":
            cmd.append("--mallopt")
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        facts = environment() | {"malloc": malloc}
        for line in out.splitlines():
            row = facts | json.loads(line)
            append_row("sampling", row)
            latest.append(row)
    print(table(latest))


if __name__ == "__main__":
    main()
