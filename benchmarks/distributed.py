"""1 process x 2 threads vs 2 processes x 1 thread (torchrun, gloo) on real Omniglot recipes.

    python benchmarks/distributed.py [--iterations 20] [--warmup 2] [--recipes omniglot/maml-5w1s ...]
        [--batch-size B]

For each recipe, the trainer's own meta-iteration (``_Loop._step``: sampling, ``meta_loss``,
backward, the all-reduce of the meta-gradients, the optimiser step, the BatchNorm sync) runs
``--warmup`` untimed then ``--iterations`` timed times, in one process with 2 threads and
under ``torchrun --nproc-per-node=2`` with 1 thread per rank. The communication share is the
time spent inside collectives (timed around them, so it includes waiting for the slower rank)
over the step time, averaged over ranks. Needs the Omniglot data (``FASTADAPT_DATA``). Appends
rows to ``results/distributed.jsonl``; ``python benchmarks/table.py`` redraws the README table.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_row, environment, read_rows

RECIPES = ("omniglot/protonet-5w1s", "omniglot/maml-5w1s")
LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # name: (processes, threads per process)


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from fastadapt.engine import distributed
    from fastadapt.engine.trainer import _Loop, resolve_config

    world = distributed.init()
    overrides = [f"train.threads={args.threads}", "train.val_every=0",
                 f"train.iterations={args.warmup + args.iterations}"]
    if args.batch_size:
        overrides.append(f"train_task.batch_size={args.batch_size}")
    config = resolve_config(args.recipe, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        loop = _Loop(config, Path(tmp), None, None, False, False, world)
        loop.model.train()
        times, comm = [], 0.0
        for step in range(args.warmup + args.iterations):
            started, comm_before = time.perf_counter(), distributed.comm_seconds()
            loop._step()
            loop.iteration += 1
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
                comm += distributed.comm_seconds() - comm_before
    shares = [comm / sum(times)]
    if world.active:
        gathered: list = [None] * world.world_size
        dist.all_gather_object(gathered, shares[0])
        shares = gathered
    if world.is_main:
        batch = config.train_task.batch_size
        append_row("distributed", {
            **environment(), "run": args.measurement, "recipe": args.recipe, "layout": args.layout,
            "processes": world.world_size, "threads_per_process": torch.get_num_threads(), "batch_size": batch,
            "iterations": args.iterations, "episodes_per_s": batch * len(times) / sum(times),
            "median_ms": 1000 * statistics.median(times), "comm_share": sum(shares) / len(shares),
            "comm_share_max": max(shares),
        })
    distributed.teardown(world)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe: str, layout: str, args: argparse.Namespace, run: str) -> None:
    processes, threads = LAYOUTS[layout]
    script = [str(Path(__file__).resolve()), "--worker", "--recipe", recipe, "--layout", layout, "--measurement", run,
              "--threads", str(threads), "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    if args.batch_size:
        script += ["--batch-size", str(args.batch_size)]
    prefix = [sys.executable]
    if processes > 1:
        prefix += ["-m", "torch.distributed.run", f"--nproc-per-node={processes}", "--master-addr", "127.0.0.1",
                   "--master-port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(prefix + script, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="timed meta-iterations per layout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--batch-size", type=int, default=0, help="tasks per meta-batch (0: the recipe's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--measurement", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 0:
        raise SystemExit(f"need --iterations >= 1 and --warmup >= 0, got {args.iterations}, {args.warmup}")
    if args.worker:
        worker(args)
        return
    run = time.strftime("%Y%m%d-%H%M%S")
    for recipe in args.recipes:
        for layout in LAYOUTS:
            launch(recipe, layout, args, run)
    from table import distributed

    print(distributed([r for r in read_rows("distributed") if r["run"] == run]))


if __name__ == "__main__":
    main()
