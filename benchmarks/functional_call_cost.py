"""What ``torch.func.functional_call`` adds to a forward pass, with and without ``tensor_aliases``.

    python benchmarks/functional_call_cost.py [--threads 1] [--repeats 2000]

The benchmarks' Conv-4s (``fastadapt.bench.build_backbone``: MAML's stride-2 and Reptile's
max-pool variant) on 2 Omniglot-sized images, so that the host-side cost is most of the call:
``model(x)`` itself, ``fastadapt.inner_loop.forward`` as it was (``functional_call``
searching the module for tied tensors on every call) and with ``aliases=tensor_aliases(model)``
computed once (``tie_weights=False``), interleaved, median over ``--repeats`` calls in
``torch.no_grad()``. Rows go to ``results/functional_call.jsonl``; ``python benchmarks/table.py``
renders them into ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_row, environment  # noqa: E402

from fastadapt.bench import build_backbone, get_config  # noqa: E402
from fastadapt.inner_loop import forward, tensor_aliases  # noqa: E402


CALLS = ("model(x)", "forward", "forward, aliases")
"""The timed calls, in the order of the table's columns (``benchmarks/table.py``)."""


def median_us(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each call in microseconds, the calls interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for config in ("maml-5w1s-2nd", "reptile-5w"):
        model = build_backbone(get_config(config))
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        aliases = tensor_aliases(model)
        x = torch.randn(2, 1, 28, 28)
        calls = dict(zip(CALLS, (
            lambda: model(x), lambda: forward(model, params, buffers, x), lambda: forward(model, params, buffers, x, aliases),
        )))
        with torch.no_grad():
            median_us(calls, 50)  # warm-up
            us = median_us(calls, args.repeats)
        row = environment() | {"config": config, "images": len(x), "repeats": args.repeats, "median_us": us}
        append_row("functional_call", row)
        print(config, {name: round(v, 1) for name, v in us.items()})


if __name__ == "__main__":
    main()
