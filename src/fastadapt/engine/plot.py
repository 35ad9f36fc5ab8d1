"""Learning-curve plots of a run (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

from fastadapt.engine.metrics_log import read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/learning_curves.png`` (train loss and metric, validation metric with its
    95% CI band; the metric is accuracy or MSE) for the run in ``run_dir``; returns the files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("plotting needs matplotlib: pip install 'fastadapt[plot]'") from error
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a run directory?")
    rows = read_metrics(metrics)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    metric = "accuracy" if any("accuracy" in r for r in train) else "mse"
    scale, unit = (100.0, " (%)") if metric == "accuracy" else (1.0, "")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("iteration"), ax_loss.set_ylabel("loss"), ax_loss.set_yscale("log")
    ax_acc.plot([r["iteration"] for r in train], [scale * r[metric] for r in train], label=f"train (query) {metric}", alpha=0.6)
    if val:
        its = [r["iteration"] for r in val]
        mean = [scale * r[metric] for r in val]
        ci = [scale * r["ci95"] for r in val]
        ax_acc.plot(its, mean, marker="o", label=f"validation {metric}")
        ax_acc.fill_between(its, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.25, label="95% CI")
    ax_acc.set_xlabel("iteration"), ax_acc.set_ylabel(metric + unit)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths = [path]
    if (run_dir / "eval_grid.json").is_file():
        paths.append(_plot_grid(plt, run_dir, out))
    return paths


def _plot_grid(plt, run_dir: Path, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """Accuracy against shots (one line per ways) and against ways (one line per shots)."""
    import json

    rows = json.loads((run_dir / "eval_grid.json").read_text())["results"]
    scale = 100.0 if rows[0]["metric"] == "accuracy" else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (x_key, line_key) in zip(axes, (("shots", "ways"), ("ways", "shots"))):
        for value in sorted({r[line_key] for r in rows}):
            line = sorted((r for r in rows if r[line_key] == value), key=lambda r: r[x_key])
            xs, ys = [r[x_key] for r in line], [scale * r["mean"] for r in line]
            ci = [scale * r["ci95"] for r in line]
            ax.errorbar(xs, ys, yerr=ci, marker="o", capsize=3, label=f"{value} {line_key}")
        ax.set_xlabel(x_key), ax.set_ylabel(rows[0]["metric"] + (" (%)" if scale == 100.0 else ""))
        ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(f"{run_dir.name}: test {rows[0]['metric']} (95% CI)")
    fig.tight_layout()
    path = out / "accuracy_vs_shots_and_ways.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
