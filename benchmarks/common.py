"""Shared plumbing of the benchmark scripts: environment facts and JSON rows.

Every benchmark appends one JSON row per measured variant to
``benchmarks/results/<name>.jsonl`` (commit, torch version, threads, machine,
config, figures), and ``benchmarks/README.md`` tables are regenerated from rows.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from fastadapt.runtime import hardware, tune_allocator
from fastadapt.tensor_pool import use_tensor_pool

RESULTS = Path(__file__).resolve().parent / "results"


# glibc keeps freed memory in the process with these (see benchmarks/README.md).
TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 1024**3),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 1024**3),
    "MALLOC_TOP_PAD_": str(1024**3),
}


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when the tree has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


_COMMIT_AT_START = commit()


def environment() -> dict[str, Any]:
    """Facts that qualify every figure; the commit is HEAD when the script started.

    ``cpu`` and ``cpu_capability`` (PyTorch's kernel level: AVX2, AVX512, ...) and
    ``bf16_native`` (``fastadapt.runtime.native_bfloat16``) name the hardware: the project's
    machines have been Intel CPUs with AMX-BF16 and AMD EPYC (Zen 2) CPUs with AVX2 only,
    and bfloat16 figures in particular differ between them by orders of magnitude.
    """
    return hardware() | {
        "commit": _COMMIT_AT_START,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "malloc": "tuned" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default",
        "date": time.strftime("%Y-%m-%d"),
    }


def process_memory_mb(fields: tuple[str, ...] = ("VmHWM", "VmRSS", "RssAnon", "RssFile")) -> dict[str, float]:
    """This process's memory figures from ``/proc/self/status`` in MB (empty where there is none).

    ``VmHWM`` is the peak resident size, the others are current: resident anonymous memory
    (heaps, the tensor pool's blocks) and resident file-backed pages (libraries' code and data).
    """
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    values = {line.split(":")[0]: line.split()[1:] for line in lines}
    return {f: int(values[f][0]) / 1024 for f in fields if f in values and values[f][1:] == ["kB"]}


def with_tensor_pool(**limits: int) -> None:
    """Apply fastadapt's allocator settings as the engine ships them (``tune_allocator`` and the
    tensor pool, ``limits`` as in ``use_tensor_pool``); exit where the pool cannot be built."""
    tune_allocator()
    if not use_tensor_pool(**limits):
        raise SystemExit("the tensor pool needs fastadapt's C++ extension, which cannot be built here")


def append_row(name: str, row: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_rows(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
