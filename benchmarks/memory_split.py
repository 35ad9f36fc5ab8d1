"""Where a peers variant's resident memory is, by kind of mapping (issue 6: the fast variant's excess).

    /work/bench-venv/bin/python benchmarks/memory_split.py maml-5w1s-1st fastadapt_fast [--min-bytes 65536]

Runs ``config`` with the ``benchmarks/peers`` module ``variant`` (``fastadapt_fast``,
``fastadapt_lean``, ``plain_torch``, ...) as fastadapt ships (``tune_allocator`` + the tensor
pool, with ``--min-bytes`` as its smallest pooled request), 2 threads, 2 warm-up and 3 timed
steps, then sums the resident kB of ``/proc/self/smaps`` by kind: the main malloc heap, thread
arenas (anonymous mappings starting on a 64 MiB boundary, as glibc places them), other anonymous
memory (the pool's blocks, large mallocs), JIT code, file-backed code and data. Prints one JSON
line with those, the peak RSS and the pool's mapped and peak-live MB. Not recorded in results/:
the figures in ``benchmarks/README.md`` quote it.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "peers"), str(HERE)]

from common import with_tensor_pool  # noqa: E402

from fastadapt.bench import CONFIGS, measure, set_threads  # noqa: E402
from fastadapt.tensor_pool import MIN_BYTES, pool_stats  # noqa: E402

ARENA_ALIGN = 64 << 20


def kind(start: int, perms: str, name: str) -> str:
    """The kind of one ``/proc/self/smaps`` mapping."""
    if name == "[heap]":
        return "main heap"
    if name.startswith("/"):
        return "file code" if "x" in perms else "file data"
    if name:
        return name  # [stack], [vdso], ...
    if "x" in perms:
        return "anon JIT code"
    return "thread arenas" if start % ARENA_ALIGN == 0 else "anon other"


def resident_by_kind() -> dict[str, float]:
    """Resident MB of this process by mapping kind."""
    sizes: collections.Counter[str] = collections.Counter()
    current = "anon other"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-[0-9a-f]+ (\S+) \S+ \S+ \S+(?:\s+(.*))?$", line)
        if head:
            current = kind(int(head.group(1), 16), head.group(2), (head.group(3) or "").strip())
        elif line.startswith("Rss:"):
            sizes[current] += int(line.split()[1])
    return {k: round(v / 1024, 1) for k, v in sorted(sizes.items()) if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("variant", help="a module of benchmarks/peers, e.g. fastadapt_fast")
    parser.add_argument("--min-bytes", type=int, default=MIN_BYTES, help="the tensor pool's smallest pooled request")
    args = parser.parse_args()
    with_tensor_pool(min_bytes=args.min_bytes)
    set_threads(2)
    config = CONFIGS[args.config]
    side = importlib.import_module(args.variant)
    m = measure(config, side.BACKWARD[config.algorithm], steps=3, warmup=2, flops=False)
    pool = pool_stats()
    print(json.dumps({"config": args.config, "variant": args.variant, "min_bytes": args.min_bytes,
                      "peak_rss_mb": round(m.peak_rss_mb, 1), **resident_by_kind(),
                      "pool_mapped_mb": round(pool["mapped_bytes"] / 2**20, 1),
                      "pool_peak_live_mb": round(pool["peak_live_bytes"] / 2**20, 1)}))


if __name__ == "__main__":
    main()
