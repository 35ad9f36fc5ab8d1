"""The ``fastadapt`` command line: a thin layer over the Python API.

    fastadapt train RECIPE [key.sub=value ...] [--run-dir DIR] | --resume RUN_DIR
    fastadapt eval RUN_DIR_OR_CHECKPOINT [key.sub=value ...]
    fastadapt recipes [show NAME]
    fastadapt plot RUN_DIR
    fastadapt data omniglot [--verify | --download]
    fastadapt bench [--configs NAME ...] [--steps N] [--threads N] [--fast] [--lean]
    fastadapt --version
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import fastadapt

DATASETS = ("omniglot",)


def _train(args: argparse.Namespace) -> int:
    from fastadapt.engine.distributed import detect
    from fastadapt.engine.runs import describe
    from fastadapt.engine.trainer import train

    if args.resume is None and args.recipe is None:
        raise ValueError("give a recipe to train (see `fastadapt recipes`) or --resume RUN_DIR")
    result = train(
        args.recipe, args.overrides, run_dir=args.resume or args.run_dir, resume=args.resume is not None,
        data_dir=args.data_dir, cache_dir=args.cache_dir, progress=not args.no_progress,
        tensorboard=args.tensorboard, download=args.download,
    )
    if not detect().is_main:  # under torchrun every rank returns the same result: rank 0 prints it
        return 0
    if result.test is not None:
        print(describe(result.test, result.config))
    print(f"run directory: {result.run_dir} (checkpoint from iteration {result.best_iteration}); "
          f"plots: fastadapt plot {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fastadapt.engine.distributed import detect
    from fastadapt.engine.runs import describe, evaluate_run

    if args.ways or args.shots:
        from fastadapt.engine.grid import evaluate_grid, grid_table

        _, results = evaluate_grid(
            args.path, args.ways, args.shots, args.overrides,
            data_dir=args.data_dir, cache_dir=args.cache_dir, progress=not args.no_progress,
        )
        if detect().is_main:
            print(grid_table(results))
        return 0
    config, result = evaluate_run(
        args.path, args.overrides, data_dir=args.data_dir, cache_dir=args.cache_dir, progress=not args.no_progress
    )
    if detect().is_main:  # under torchrun every rank returns the same result: rank 0 prints it
        print(describe(result, config))
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from fastadapt.recipes import get_recipe, list_recipes

    if args.action == "show":
        if not args.name:
            raise ValueError("`fastadapt recipes show` needs a recipe name")
        print(get_recipe(args.name).to_yaml(), end="")
        return 0
    if args.action is not None:
        raise ValueError(f"unknown recipes action {args.action!r}; use `fastadapt recipes` or `fastadapt recipes show NAME`")
    for name in list_recipes():
        config = get_recipe(name)
        unit = " %" if config.eval.metric == "accuracy" else " mse"
        ref = f"{config.reference.value}{unit}" if config.reference.value is not None else "-"
        print(f"{name:28s} paper {ref:>8s}  {config.description}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from fastadapt.engine.plot import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def _data(args: argparse.Namespace) -> int:
    from fastadapt.data import omniglot

    if args.download:
        path = omniglot.download_omniglot(data_dir=args.data_dir)
        print(f"omniglot archives verified in {path}")
    if args.verify or not args.download:
        print(omniglot.verify_report(data_dir=args.data_dir, cache_dir=args.cache_dir))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from fastadapt.bench import format_table, run

    results, peak = run(args.configs, steps=args.steps, warmup=args.warmup, threads=args.threads,
                        allocator=not args.no_tune_allocator, fast=args.fast, lean=args.lean)
    print(format_table(results, peak, args.threads, allocator=not args.no_tune_allocator))
    return 0


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="data directory (default: $FASTADAPT_DATA or ~/.cache/fastadapt/data)")
    parser.add_argument("--cache-dir", default=None, help="decoded-cache directory (default: $FASTADAPT_CACHE or ~/.cache/fastadapt/cache)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastadapt", description="Meta-learning on PyTorch: train, evaluate and inspect few-shot learners."
    )
    parser.add_argument("--version", action="version", version=f"fastadapt {fastadapt.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="meta-train a recipe, validate, test")
    train.add_argument("recipe", nargs="?", help="recipe name (see `fastadapt recipes`)")
    train.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    train.add_argument("--run-dir", default=None, help="run directory (default runs/<recipe>/<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--download", action="store_true", help="fetch the dataset's official archives if no local copy is found")
    _data_options(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained run or checkpoint on the test split")
    evaluate.add_argument("path", help="run directory or checkpoint file")
    evaluate.add_argument("overrides", nargs="*", help="e.g. eval_task.ways=20 eval_task.shots=5")
    evaluate.add_argument("--ways", type=int, nargs="+", default=None, help="evaluate each of these ways (a grid with --shots)")
    evaluate.add_argument("--shots", type=int, nargs="+", default=None, help="evaluate each of these shots")
    evaluate.add_argument("--no-progress", action="store_true")
    _data_options(evaluate)
    evaluate.set_defaults(handler=_eval)

    recipes = commands.add_parser("recipes", help="list recipes, or show one resolved")
    recipes.add_argument("action", nargs="?", help="show")
    recipes.add_argument("name", nargs="?")
    recipes.set_defaults(handler=_recipes)

    plot = commands.add_parser("plot", help="write learning-curve PNGs of a run")
    plot.add_argument("run_dir")
    plot.set_defaults(handler=_plot)

    data = commands.add_parser("data", help="find, verify or download a dataset")
    data.add_argument("dataset", choices=DATASETS, help="dataset name")
    data.add_argument("--verify", action="store_true", help="report what is found: counts, hashes, cache state")
    data.add_argument("--download", action="store_true", help="download the official archives and verify them")
    _data_options(data)
    data.set_defaults(handler=_data)

    bench = commands.add_parser("bench", help="time fastadapt's meta-training steps on this machine")
    bench.add_argument("--configs", nargs="+", default=None, help="configs to run (default: all of fastadapt.bench.CONFIGS)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps per config (default: a few, per config)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per config")
    bench.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    bench.add_argument("--no-tune-allocator", action="store_true", help="leave glibc malloc at its defaults and PyTorch's CPU allocator in place (no tensor pool)")
    bench.add_argument("--fast", action="store_true",
                       help="also time each config with the speed settings (bfloat16 where the CPU has it natively, task workers, channels-last, ...)")
    bench.add_argument("--lean", action="store_true",
                       help="also time the speed settings at their memory end (less memory, slower): MAML and "
                            "Reptile without task workers (one task's graph at a time), ProtoNet with compact activations")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastadapt`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError, OSError) as error:
        print(f"fastadapt: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
