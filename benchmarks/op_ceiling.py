"""The most of the matmul peak a config's step could reach with PyTorch's own kernels (issue 6's 80 % aim).

    /work/bench-venv/bin/python benchmarks/op_ceiling.py [--configs ...] [--variant fast|lean] [--top 4]

Records every FLOP-counted ATen call of one training step of ``--variant`` (``fastadapt.bench``'s
``fast_backward`` or ``lean_backward``; under the recording mode the task workers run in turn on
the calling thread, so every call is seen): convolutions, their backward, matrix products. Then
runs each distinct call (operator, argument shapes, strides and dtypes, flags) alone on fresh
random tensors of the same layout, at 1 and at 2 intra-op threads, and takes its fastest time.
The sum of those times over the step's calls is what the step's counted FLOPs take with nothing
else in the step (no element-wise ops, no BatchNorm, no allocation, no Python, no framework):
``ceiling %`` = counted FLOPs / that time / the square float32 matmul peak at the same thread count
(``fastadapt.bench.matmul_peak``, measured in the same run). The fast variants run 1 intra-op
thread per task worker, so their bound is the 1-thread column; the lean variants' the 2-thread one.
Prints one line per config and its most expensive calls at that thread count; appends rows to
``results/op_ceiling.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import torch  # noqa: E402
from common import append_row, environment, with_tensor_pool  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fastadapt.bench import CONFIGS, build_backbone, fast_backward, lean_backward, matmul_peak, synthetic_batch  # noqa: E402

aten = torch.ops.aten
COUNTED = {aten.convolution.default, aten.convolution_backward.default, aten.mm.default, aten.addmm.default,
           aten.bmm.default, aten.baddbmm.default}
"""The ATen calls ``FlopCounterMode`` counts in these steps (what the bench table's GFLOP/s counts)."""


def spec(value: Any) -> Any:
    """A hashable description of one argument: tensors by shape, strides and dtype."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(spec(v) for v in value)
    return value


def build(described: Any, g: torch.Generator) -> Any:
    """Arguments like the recorded ones: random tensors of the same shape, strides and dtype."""
    if isinstance(described, tuple) and described[:1] == ("tensor",):
        _, shape, stride, dtype = described
        tensor = torch.empty_strided(shape, stride, dtype=dtype)
        flat = tensor.untyped_storage().nbytes() // tensor.element_size()
        tensor.as_strided((flat,), (1,)).normal_(generator=g)  # through the storage: broadcast (stride-0) views too
        return tensor
    if isinstance(described, tuple):
        return [build(d, g) for d in described]
    return described


class Record(TorchDispatchMode):
    """Counts the counted calls of the step by their description."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[Any, ...]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in COUNTED:
            self.calls[(func, spec(tuple(args)), spec(tuple(sorted((kwargs or {}).items()))))] += 1
        return func(*args, **(kwargs or {}))


def fastest(call: tuple[Any, ...], threads: int, budget_s: float = 0.2) -> tuple[float, int]:
    """The call's fastest time alone at ``threads`` intra-op threads, and its counted FLOPs."""
    func, args, kwargs = call
    g = torch.Generator().manual_seed(0)
    built_args, built_kwargs = build(args, g), dict(build(kwargs, g)) if kwargs else {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with FlopCounterMode(display=False) as counter:
            func(*built_args, **built_kwargs)
        best, spent, runs = float("inf"), 0.0, 0
        while runs < 5 or (spent < budget_s and runs < 500):
            start = time.perf_counter()
            func(*built_args, **built_kwargs)
            took = time.perf_counter() - start
            best, spent, runs = min(best, took), spent + took, runs + 1
    finally:
        torch.set_num_threads(previous)
    return best, int(counter.get_total_flops())


def describe(call: tuple[Any, ...]) -> str:
    func, args, _ = call
    shapes = [a[1] for a in args if isinstance(a, tuple) and a[:1] == ("tensor",)]
    return f"{func.__name__.split('.')[0]} {' '.join('x'.join(map(str, s)) for s in shapes[:3])}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variant", choices=["fast", "lean"], default="fast")
    parser.add_argument("--top", type=int, default=4, help="most expensive calls shown per config")
    args = parser.parse_args(argv)
    with_tensor_pool()
    peaks = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks[threads] = matmul_peak()
    make = {"fast": fast_backward, "lean": lean_backward}[args.variant]
    bound = {"fast": 1, "lean": 2}[args.variant]  # the intra-op threads each of the variant's calls runs on
    for name in args.configs:
        config = CONFIGS[name]
        torch.set_num_threads(2)  # the speed settings read the thread count (task workers)
        backbone = build_backbone(config)
        backward = make(config, backbone)
        batch = synthetic_batch(config, 0)
        backward(batch)  # warm-up (workers started, kernels loaded)
        record = Record()
        with record:
            backward(batch)
        rows, totals, flops = [], {1: 0.0, 2: 0.0}, 0
        for call, count in record.calls.items():
            times = {}
            for threads in (1, 2):
                times[threads], call_flops = fastest(call, threads)
                totals[threads] += count * times[threads]
            flops += count * call_flops
            rows.append((count * times[bound], count, call_flops, times, describe(call)))
        pct = {t: 100 * flops / totals[t] / 1e9 / peaks[t] for t in (1, 2)}
        print(f"{name:20s} {args.variant}: {flops / 1e9:6.2f} GFLOP counted in {sum(record.calls.values())} calls "
              f"({len(record.calls)} distinct); alone: {totals[1] * 1e3:7.1f} ms at 1 thread = {pct[1]:4.1f} % of "
              f"{peaks[1]:.0f} GFLOP/s, {totals[2] * 1e3:7.1f} ms at 2 threads = {pct[2]:4.1f} % of {peaks[2]:.0f}")
        for share, count, call_flops, times, text in sorted(rows, reverse=True)[: args.top]:
            print(f"    {100 * share / totals[bound]:5.1f} % of the {bound}-thread time: {count:4d} x {text} "
                  f"({call_flops / times[1] / 1e9:.0f} GFLOP/s at 1 thread, {call_flops / times[2] / 1e9:.0f} at 2)")
        append_row("op_ceiling", environment() | {
            "config": name, "variant": args.variant, "counted_gflop": flops / 1e9, "calls": sum(record.calls.values()),
            "distinct_calls": len(record.calls), "alone_ms": {str(t): totals[t] * 1e3 for t in (1, 2)},
            "matmul_gflops": {str(t): peaks[t] for t in (1, 2)}, "ceiling_pct": {str(t): pct[t] for t in (1, 2)},
        })


if __name__ == "__main__":
    main()
