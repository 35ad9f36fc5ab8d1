"""Learning-curve plots of a run (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

from fastadapt.engine.metrics_log import read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/learning_curves.png`` (train loss and accuracy, validation accuracy with
    its 95% CI band) for the run in ``run_dir``; returns the files written."""
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
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("iteration"), ax_loss.set_ylabel("loss"), ax_loss.set_yscale("log")
    ax_acc.plot([r["iteration"] for r in train], [100 * r["accuracy"] for r in train], label="train (query) accuracy", alpha=0.6)
    if val:
        its = [r["iteration"] for r in val]
        mean = [100 * r["accuracy"] for r in val]
        ci = [100 * r["ci95"] for r in val]
        ax_acc.plot(its, mean, marker="o", label="validation accuracy")
        ax_acc.fill_between(its, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.25, label="95% CI")
    ax_acc.set_xlabel("iteration"), ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
