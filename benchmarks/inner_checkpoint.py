"""Second-order MAML memory and time against the number of inner steps, with and without ``inner_checkpoint``.

    python benchmarks/inner_checkpoint.py [--config maml-20w1s-5steps] [--inner-steps 1 5 10 20]
        [--variants plain fastadapt fastadapt-checkpoint fastadapt-fast fastadapt-fast-partial
                    fastadapt-fast-checkpoint]
        [--threads 2] [--steps 3]

The config's task shape and meta-batch with its ``inner_steps`` replaced; each (inner steps,
variant) in its own process under the benchmarks' identical malloc settings (``TUNED_MALLOC``,
no ``tune_allocator``), the same Conv-4 and seeded synthetic batches (``fastadapt.bench.measure``:
1 warm-up step excluded). Variants: ``plain`` (``benchmarks/peers/plain_torch.py``, the loop a
user writes: one task's graph at a time), ``fastadapt`` (defaults), ``fastadapt-fast``
(``fastadapt.bench.speed_options``: two task workers, bfloat16 query passes, ... with every inner
step's graph kept, ``inner_checkpoint=False``), ``fastadapt-fast-partial`` (``speed_options`` as
``fastadapt bench --fast`` runs them since ac5617b: ``inner_checkpoint = inner_steps // workers``),
each ``-checkpoint`` with ``inner_checkpoint=True`` (one step's graph kept). Columns: median
step, peak RSS (``ru_maxrss`` after the timed steps) and, for the one-thread-of-tasks variants, the peak bytes of tensors autograd saves for
backward during one more step (``torch.autograd.graph.saved_tensors_hooks``, counted exactly:
what the graph holds, whatever the allocator does; the hooks are per thread, so the two-worker
variants leave it empty). Rows go to ``results/inner_checkpoint.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from common import TUNED_MALLOC, append_row, environment

from fastadapt.bench import CONFIGS, BenchConfig, build_backbone, learner_backward, measure, speed_options, synthetic_batch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

VARIANTS = (
    "plain", "fastadapt", "fastadapt-checkpoint", "fastadapt-fast", "fastadapt-fast-partial", "fastadapt-fast-checkpoint",
)


class SavedBytes:
    """Peak bytes of the storages of tensors autograd saves for backward that are alive at once
    (a storage saved several times, e.g. through views, counts once)."""

    def __init__(self) -> None:
        self.alive = self.peak = 0
        self.storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, saved tensors holding it]

    def pack(self, tensor: torch.Tensor) -> Held:
        return Held(tensor, self)

    def add(self, key: int, size: int) -> None:
        entry = self.storages.setdefault(key, [size, 0])
        entry[1] += 1
        if entry[1] == 1:
            self.alive += size
            self.peak = max(self.peak, self.alive)

    def remove(self, key: int) -> None:
        entry = self.storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.alive -= entry[0]
            del self.storages[key]


class Held:
    def __init__(self, tensor: torch.Tensor, counter: SavedBytes) -> None:
        storage = tensor.untyped_storage()
        self.tensor, self.counter, self.key = tensor, counter, storage.data_ptr()
        counter.add(self.key, storage.nbytes())

    def __del__(self) -> None:
        self.counter.remove(self.key)


def build(variant: str, config: BenchConfig, backbone: torch.nn.Module):
    if variant == "plain":
        import plain_torch

        return plain_torch.maml(config, backbone)
    options = speed_options(config) if variant.startswith("fastadapt-fast") else {}
    if variant != "fastadapt-fast-partial":
        options["inner_checkpoint"] = variant.endswith("-checkpoint")
    return learner_backward(config, backbone, **options)


def child(config_name: str, inner_steps: int, variant: str, threads: int, steps: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    base = CONFIGS[config_name]
    config = dataclasses.replace(base, algorithm_args=base.algorithm_args | {"inner_steps": inner_steps})
    m = measure(config, lambda c, backbone: build(variant, c, backbone), steps=steps, warmup=1, flops=False)
    saved = None
    if not variant.startswith("fastadapt-fast"):  # one thread of tasks: the hooks see every saved tensor
        counter = SavedBytes()
        backward = build(variant, config, build_backbone(config))
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda held: held.tensor):
            backward(synthetic_batch(config, 0))
        saved = counter.peak / 2**20
    return {"median_s": statistics.median(m.times), "min_s": min(m.times), "max_s": max(m.times),
            "peak_rss_mb": m.peak_rss_mb, "saved_peak_mb": saved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="maml-20w1s-5steps", choices=[n for n, c in CONFIGS.items() if c.algorithm == "maml"])
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if CONFIGS[args.config].algorithm_args.get("first_order"):
        parser.error(f"{args.config} is first order: inner_checkpoint changes nothing there")
    if args.child:
        inner_steps, variant = int(args.child[0]), args.child[1]
        print(json.dumps(child(args.config, inner_steps, variant, args.threads, args.steps)))
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | TUNED_MALLOC | {"OMP_NUM_THREADS": str(args.threads)}
    for inner_steps in args.inner_steps:
        for variant in args.variants:
            command = [sys.executable, __file__, "--config", args.config, "--threads", str(args.threads),
                       "--steps", str(args.steps), "--child", str(inner_steps), variant]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            saved = "" if r["saved_peak_mb"] is None else f"{r['saved_peak_mb']:7.1f} MB saved"
            print(f"{args.config} inner_steps={inner_steps:<3d} {variant:26s} {r['median_s'] * 1e3:8.0f} ms "
                  f"{r['peak_rss_mb']:6.0f} MB RSS {saved}", flush=True)
            append_row("inner_checkpoint", environment() | r | {
                "config": args.config, "inner_steps": inner_steps, "variant": variant, "steps": args.steps,
                "threads": args.threads, "malloc": "tuned",
            })


if __name__ == "__main__":
    main()
