"""Reproduce MAML's sinusoid table (Finn et al. 2017, Table 2) and its figures.

    python benchmarks/sinusoid.py [--iterations 70000] [--out /tmp/sinusoid-runs]

Trains ``sinusoid/maml`` and ``sinusoid/pretrain``; picks the pretrained model's
fine-tuning step size on validation tasks (never the test tasks); evaluates both on
the 600 test tasks (K=5) after 1, 5 and 10 steps; appends rows to
``results/reproductions.jsonl``; draws ``figures/sinusoid_adaptation.png`` (MSE
against gradient steps) and ``figures/sinusoid_fits.png`` (fitted sine functions).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from common import append_row, environment

from fastadapt.engine import evaluate, train
from fastadapt.engine.build import build_source
from fastadapt.engine.runs import load_for_eval

PAPER = {"sinusoid/maml": {1: 0.67, 5: 0.38, 10: 0.35}, "sinusoid/pretrain": {1: 2.41, 5: 2.23, 10: 2.19}}
STEP_SIZES = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1)
FIGURES = Path(__file__).resolve().parent / "figures"


def mse_at(run_dir: Path, steps: int, lr: float, partition: str, episodes: int) -> object:
    config, model, _ = load_for_eval(run_dir, [f"algorithm.args.eval_inner_steps={steps}", f"algorithm.args.inner_lr={lr}"])
    model.eval()
    return evaluate(model.predict, build_source(config, partition), episodes, batch_size=100, metric="mse", bn_policy="no BatchNorm")


def choose_step_size(run_dir: Path) -> tuple[float, dict[float, float]]:
    """Fine-tuning step size of the pretrained model with the lowest validation MSE after 10 steps."""
    scores = {lr: mse_at(run_dir, 10, lr, "val", 200).mean for lr in STEP_SIZES}
    return min(scores, key=scores.get), scores


def plot(runs: dict[str, tuple[Path, float]], curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, values in curves.items():
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xlabel("gradient steps at test"), ax.set_ylabel("query MSE (600 tasks, K=5)"), ax.set_yscale("log")
    ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout(), fig.savefig(FIGURES / "sinusoid_adaptation.png", dpi=110), plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, (run_dir, lr)) in zip(axes, runs.items()):
        config, model, _ = load_for_eval(run_dir)
        batch = build_source(config, "test").sample([0])
        grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
        truth = batch.extras["amplitude"][0] * torch.sin(grid[0, :, 0] - batch.extras["phase"][0])
        ax.plot(grid[0, :, 0], truth, "k", label="ground truth")
        ax.scatter(batch.support_x[0, :, 0], batch.support_y[0, :, 0], c="k", marker="^", label="K=5 support points")
        for steps in (0, 1, 10):
            _, adapted, _ = load_for_eval(run_dir, [f"algorithm.args.eval_inner_steps={steps}", f"algorithm.args.inner_lr={lr}"])
            with torch.no_grad():
                out = adapted.predict(batch.support_x, batch.support_y, grid)
            ax.plot(grid[0, :, 0], out[0, :, 0], "--", label=f"after {steps} steps")
        ax.set_title(name), ax.set_xlabel("x"), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(FIGURES / "sinusoid_fits.png", dpi=110), plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=None, help="override the recipes' 70,000")
    parser.add_argument("--out", default="runs/sinusoid", help="where the two runs are written")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    overrides = [f"train.iterations={args.iterations}"] if args.iterations else []
    runs, curves = {}, {}
    for name in ("sinusoid/maml", "sinusoid/pretrain"):
        start = time.perf_counter()
        result = train(name, overrides, run_dir=Path(args.out) / name.split("/")[1], progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        lr, note = 0.01, "inner step size 0.01 as in training"
        if name == "sinusoid/pretrain":
            lr, scores = choose_step_size(result.run_dir)
            note = f"fine-tuning step size {lr} chosen on 200 validation tasks from {scores}"
        runs[name] = (result.run_dir, lr)
        curves[name] = [mse_at(result.run_dir, k, lr, "test", 600).mean for k in range(11)]
        for steps, paper in PAPER[name].items():
            test = mse_at(result.run_dir, steps, lr, "test", 600)
            append_row("reproductions", environment() | {
                "recipe": f"{name} ({steps} step{'s' if steps > 1 else ''})", "paper": paper, "paper_ci95": None,
                "source": result.config.reference.source, "mean": test.mean, "ci95": test.ci95, "n": test.n,
                "spec": str(test.spec), "bn": test.bn_policy, "train_seconds": seconds,
                "iterations": result.config.train.iterations, "paper_iterations": 70000, "command": command,
                "note": note, "metric": "mse",
            })
            print(f"{name} after {steps} steps: {test}  (paper {paper})", flush=True)
    plot(runs, curves)


if __name__ == "__main__":
    main()
