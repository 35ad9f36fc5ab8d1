"""Where the peak resident memory of a training step goes: heap bytes in use vs pages touched.

    /work/bench-venv/bin/python benchmarks/heap_peak.py [--configs ...] [--variants ...] [--steps 3]

The peers table compares peak RSS; this says how much of it the step's allocations need. Each
(config, variant) of ``benchmarks/peers`` runs in its own process under the identical-malloc
environment (``common.TUNED_MALLOC``) with ``heap/heap_track.c`` preloaded (compiled here with
``cc``): every malloc/free is counted with ``malloc_usable_size``, exactly, per glibc heap. After
2 warm-up steps a window covers ``--steps`` steps: heap bytes in use when it opens, their peak
within it (short-lived blocks included), and the pages each glibc heap touched: the main (brk)
heap up to the highest block end, and each thread arena's 64 MiB heap from its base (a thread
that allocates gets its own arena; its pages are new resident memory, where the main heap's
freed holes are reused). Peak RSS is ``ru_maxrss`` at the end. Rows go to
``results/heap.jsonl``; ``python benchmarks/table.py`` renders them into ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "peers"), str(HERE)]

from common import TUNED_MALLOC, append_row, environment  # noqa: E402

from fastadapt.bench import CONFIGS, measure, set_threads  # noqa: E402

from run import VARIANTS as PEER_VARIANTS  # noqa: E402

VARIANTS = {name: module for name, module in PEER_VARIANTS.items() if name != "fastadapt-threads"}
# As in heap/heap_track.c: its slots, the key of the main (brk) heap, and a thread arena's key is its
# address >> ARENA_HEAP_BITS (glibc's 64 MiB heaps are aligned to their size).
HEAPS, MAIN_HEAP, ARENA_HEAP_BITS = 64, 1, 26
MB = 2**20


def build_tracker(directory: Path) -> Path:
    """``heap/heap_track.c`` compiled into ``directory`` (raises naming the missing compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("heap_peak.py needs a C compiler (cc or gcc) to build heap/heap_track.c")
    library = directory / "heap_track.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", str(HERE / "heap" / "heap_track.c"), "-o", str(library), "-ldl"],
                   check=True)
    return library


def main_heap_start() -> int:
    """Start address of the process's ``[heap]`` mapping."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[heap]"):
            return int(line.split("-")[0], 16)
    raise RuntimeError("no [heap] mapping in /proc/self/maps")


def child(config_name: str, variant: str, steps: int, warmup: int) -> dict:
    lib = ctypes.CDLL(None)
    if not hasattr(lib, "heap_track_reset"):
        raise RuntimeError("heap/heap_track.so is not preloaded (run without --child)")
    lib.heap_track_peak_delta.restype = ctypes.c_long
    config = CONFIGS[config_name]
    side = importlib.import_module(VARIANTS[variant])
    measured = measure(config, lambda c, backbone: side.BACKWARD[c.algorithm](c, backbone), steps=steps,
                       warmup=warmup, on_timed_start=lib.heap_track_reset, flops=False)
    delta = lib.heap_track_peak_delta()
    peak_rss = measured.peak_rss_mb
    key, start, peak, top = ctypes.c_size_t(), ctypes.c_long(), ctypes.c_long(), ctypes.c_size_t()
    heaps, base = [], main_heap_start()
    for i in range(HEAPS):
        if lib.heap_track_heap(i, ctypes.byref(key), ctypes.byref(start), ctypes.byref(peak), ctypes.byref(top)):
            arena = key.value != MAIN_HEAP
            origin = key.value << ARENA_HEAP_BITS if arena else base
            heaps.append({"kind": "arena" if arena else "main", "in_use_start_mb": start.value / MB,
                          "peak_in_use_mb": peak.value / MB,
                          "touched_mb": max(0, top.value - origin) / MB if top.value else 0.0})
    in_use = sum(h["in_use_start_mb"] for h in heaps)
    return {"in_use_start_mb": in_use, "peak_in_use_mb": in_use + delta / MB, "step_peak_mb": delta / MB,
            "peak_rss_mb": peak_rss, "heaps": [h for h in heaps if h["peak_in_use_mb"] >= 0.5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["maml-5w1s-2nd", "maml-20w1s-5steps", "reptile-5w"],
                        choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.warmup)))
        return
    print("\n".join(HEADER))
    with tempfile.TemporaryDirectory() as scratch:
        tracker = build_tracker(Path(scratch))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | TUNED_MALLOC
        env |= {"OMP_NUM_THREADS": str(args.threads), "LD_PRELOAD": str(tracker)}
        for config in args.configs:
            for variant in args.variants:
                if CONFIGS[config].algorithm not in importlib.import_module(VARIANTS[variant]).BACKWARD:
                    continue
                argv = [sys.executable, __file__, "--child", config, variant, "--threads", str(args.threads),
                        "--steps", str(args.steps), "--warmup", str(args.warmup)]
                done = subprocess.run(argv, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise RuntimeError(f"{config} {variant} failed:\n{done.stderr.strip()}")
                row = environment() | {"malloc": "tuned", "config": config, "variant": variant, "steps": args.steps,
                                       "warmup": args.warmup} | json.loads(done.stdout.strip().splitlines()[-1])
                append_row("heap", row)
                print(line(row), flush=True)


HEADER = ["| config | variant | heap in use at step start MB | peak heap in use MB (step's share) | "
          "pages touched: main heap / thread arenas MB | peak RSS MB | threads | commit |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]


def table(rows: list[dict]) -> str:
    """``HEADER`` and one line per row."""
    return "\n".join(HEADER + [line(r) for r in rows])


def line(r: dict) -> str:
    main_heap = sum(h["touched_mb"] for h in r["heaps"] if h["kind"] == "main")
    arenas = [h["touched_mb"] for h in r["heaps"] if h["kind"] == "arena"]
    touched = f"{main_heap:.0f} / " + (" + ".join(f"{t:.0f}" for t in arenas) if arenas else "-")
    return (f"| {r['config']} | {r['variant']} | {r['in_use_start_mb']:.1f} | {r['peak_in_use_mb']:.1f} "
            f"(+{r['step_peak_mb']:.1f}) | {touched} | {r['peak_rss_mb']:.0f} | {r['threads']} | {r['commit']} |")


if __name__ == "__main__":
    main()
