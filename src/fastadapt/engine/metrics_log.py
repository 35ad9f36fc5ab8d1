"""Run metrics as JSON lines (one row per logged step), optionally mirrored to TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends rows to ``run_dir/metrics.jsonl``; rows carry ``iteration`` and ``split``.

    Args:
        path: the JSON-lines file.
        tensorboard_dir: if given, also write TensorBoard scalars there (needs the
            ``tensorboard`` extra).
    """

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise RuntimeError("TensorBoard logging needs `pip install fastadapt[tensorboard]`") from error
            self._writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, iteration: int) -> None:
        """Drop rows logged after ``iteration`` (a resumed run re-logs them)."""
        if self.path.exists():
            rows = [r for r in read_metrics(self.path) if r["iteration"] <= iteration]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            tmp.replace(self.path)

    def log(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("iteration",):
                    self._writer.add_scalar(f"{row['split']}/{key}", value, row["iteration"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
