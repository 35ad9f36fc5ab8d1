"""Train a recipe (optionally shortened), evaluate it, and record a results row.

    python benchmarks/reproduce.py RECIPE [--iterations N] [--minutes M] [--set KEY=VALUE ...] [--also NAME:OVERRIDE ...] [--run-dir DIR] [--from-run DIR]

Appends one JSON row per evaluated recipe to ``benchmarks/results/reproductions.jsonl``:
recipe, paper figure, ours (mean ± CI, n), wall time, iterations, machine, commit,
and the exact command. ``--also omniglot/protonet-20w1s:eval_task.ways=20`` evaluates
the same trained model under another recipe's test protocol (the ProtoNets paper
tests one model per shot count at 5 and 20 ways).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from common import append_row, environment

from fastadapt.engine import evaluate_run, train
from fastadapt.recipes import get_recipe


def row(recipe: str, result, seconds: float, iterations: int, command: str, note: str) -> dict:
    ref = get_recipe(recipe).reference
    return environment() | {
        "recipe": recipe, "paper": ref.value, "paper_ci95": ref.ci95, "source": ref.source,
        "mean": 100 * result.mean, "ci95": 100 * result.ci95, "n": result.n, "spec": str(result.spec),
        "bn": result.bn_policy, "train_seconds": seconds, "iterations": iterations,
        "paper_iterations": get_recipe(recipe).train.iterations, "command": command, "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (train.max_minutes)")
    parser.add_argument("--also", nargs="*", default=[], help="RECIPE:override[,override] evaluated on the same model")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--from-run", default=None, metavar="DIR",
                        help="skip training: evaluate the trained run DIR (of RECIPE) under the --also protocols")
    parser.add_argument("--note", default="")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="further config overrides")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    overrides = ([f"train.iterations={args.iterations}"] if args.iterations else []) + args.set
    if args.minutes:
        overrides.append(f"train.max_minutes={args.minutes}")
    if args.from_run:
        run_dir = Path(args.from_run)
        trained = json.loads((run_dir / "results.json").read_text())
        seconds, iterations = trained["train_seconds"], trained["train_iterations"]
    else:
        start = time.perf_counter()
        result = train(args.recipe, overrides, run_dir=args.run_dir, progress=sys.stderr.isatty())
        seconds, iterations, run_dir = time.perf_counter() - start, result.iterations, result.run_dir
        append_row("reproductions", row(args.recipe, result.test, seconds, iterations, command, args.note))
        print(f"{args.recipe}: {result.test}", flush=True)
    for item in args.also:
        name, _, extra = item.partition(":")
        _, other = evaluate_run(run_dir, [o for o in extra.split(",") if o], progress=False)
        append_row("reproductions", row(name, other, seconds, iterations, command, args.note + f" (model of {args.recipe}, {extra})"))
        print(f"{name}: {other}", flush=True)


if __name__ == "__main__":
    main()
