"""Streamed loop vs one-graph loop vs ``vmap`` over the tasks of a meta-batch: time per meta-iteration and peak memory.

    python benchmarks/task_batching.py [--repeats 10]

Each (config, batching) runs in its own process (so peak RSS is its own) with glibc
malloc tuned as the engine does by default (``fastadapt.runtime.tune_allocator``), a
warm-up iteration excluded. Appends rows to ``results/task_batching.jsonl`` and prints
the table. ``benchmarks/README.md`` records which path MAML uses by default and why.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import append_row, environment

CONFIGS = {
    # name: (backbone kwargs, spec (ways, shots, queries), tasks, first_order, example shape)
    "sinusoid-mlp-25tasks-2nd": ({"name": "mlp"}, (1, 10, 10), 25, False, (1,)),
    "omniglot-conv4(noBN)-5w1s1q-32tasks-2nd": (
        {"name": "conv4", "bn": "none", "pool": "stride", "readout": "mean", "out_features": 5}, (5, 1, 1), 32, False, (1, 28, 28)),
    "omniglot-conv4(BN)-5w1s1q-32tasks-1st": (
        {"name": "conv4", "bn": "batch", "pool": "stride", "readout": "mean", "out_features": 5}, (5, 1, 1), 32, True, (1, 28, 28)),
    # the default MAML Omniglot configuration (vmap refuses it: functorch#534)
    "omniglot-conv4(BN)-5w1s15q-32tasks-2nd": (
        {"name": "conv4", "bn": "batch", "pool": "stride", "readout": "mean", "out_features": 5}, (5, 1, 15), 32, False, (1, 28, 28)),
}
BATCHINGS = ("stream", "loop", "vmap")


def batchings(config: str) -> list[str]:
    """The task batchings ``config`` runs under (``vmap`` is refused for second order through BatchNorm)."""
    backbone_args, _, _, first_order, _ = CONFIGS[config]
    refused = not first_order and backbone_args.get("bn", "none") != "none"
    return [b for b in BATCHINGS if not (b == "vmap" and refused)]


def child(config: str, batching: str, repeats: int) -> None:
    import torch

    from fastadapt.algorithms import MAML
    from fastadapt.runtime import tune_allocator

    tune_allocator()  # as the engine does by default (train.tune_allocator)
    from fastadapt.models import create_model
    from fastadapt.tasks import EpisodeBatch, TaskSpec

    backbone_args, (ways, shots, queries), tasks, first_order, shape = CONFIGS[config]
    args = dict(backbone_args)
    torch.manual_seed(0)
    backbone = create_model(args.pop("name"), **args)
    model = MAML(backbone, inner_lr=0.4, inner_steps=1, first_order=first_order, task_batching=batching,
                 loss="mse" if ways == 1 else "cross_entropy")
    g = torch.Generator().manual_seed(0)
    spec = TaskSpec(ways, shots, queries)
    target = (lambda n: torch.randn(tasks, n, 1, generator=g)) if ways == 1 else (
        lambda n: torch.arange(ways).repeat_interleave(n // ways).repeat(tasks, 1))
    batch = EpisodeBatch(torch.randn(tasks, ways * shots, *shape, generator=g), target(ways * shots),
                         torch.randn(tasks, ways * queries, *shape, generator=g), target(ways * queries), spec)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model.meta_loss(batch).loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    print(json.dumps({"median_ms": 1e3 * sorted(times)[len(times) // 2], "min_ms": 1e3 * min(times),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeats)
        return
    print("| config | batching | median ms / meta-iteration | min ms | peak RSS MB |\n| --- | --- | ---: | ---: | ---: |")
    for config in CONFIGS:
        for batching in batchings(config):
            out = subprocess.run([sys.executable, __file__, "--child", config, batching, "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True).stdout
            row = environment() | {"config": config, "batching": batching, "malloc": "tune_allocator"} | json.loads(out)
            append_row("task_batching", row)
            print(f"| {config} | {batching} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
