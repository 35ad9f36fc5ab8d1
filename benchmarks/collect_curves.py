"""Copy finished runs' learning curves into the repository.

    python benchmarks/collect_curves.py RUN_DIR:NAME [RUN_DIR:NAME ...]

For each run: ``results/curves/NAME.jsonl`` (its ``metrics.jsonl``), ``NAME.config.yaml``
and ``figures/NAME-curves.png`` (redrawn by ``fastadapt.engine.plot.plot_run``). Run
directories stay outside the repository; these three files are what the README cites.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fastadapt.engine.plot import plot_run

HERE = Path(__file__).resolve().parent


def collect(run_dir: Path, name: str) -> None:
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    curves = HERE / "results" / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "metrics.jsonl", curves / f"{name}.jsonl")
    shutil.copyfile(run_dir / "config.yaml", curves / f"{name}.config.yaml")
    figure = next(p for p in plot_run(run_dir) if p.name == "learning_curves.png")
    shutil.copyfile(figure, HERE / "figures" / f"{name}-curves.png")
    print(f"{run_dir} -> {name}")


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for item in sys.argv[1:]:
        run_dir, sep, name = item.rpartition(":")
        if not sep:
            raise SystemExit(f"expected RUN_DIR:NAME, got {item!r}")
        collect(Path(run_dir), name)


if __name__ == "__main__":
    main()
