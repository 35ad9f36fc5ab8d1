"""Meta-training speed on this machine: ``fastadapt bench``.

Times training steps of fastadapt's learners on seeded synthetic Omniglot-shaped
episodes (``1x28x28``) with the papers' Conv-4 (64 filters), each config in a fresh
process (so its peak resident memory is its own) with the warm-up excluded. A step
is the meta-gradient (``meta_loss(batch).loss.backward()``) plus the outer optimiser's
update. FLOPs per step are counted once with ``torch.utils.flop_counter`` (matrix
products and convolutions; element-wise work is not counted), and the achieved rate is
compared with a float32 ``2048x2048`` matmul timed in the same run with the same threads.

``benchmarks/peers`` runs the same configs (``CONFIGS``, ``synthetic_batch``,
``build_backbone``, ``measure``) for the peer libraries, so both report identical work.

Example:
    >>> from fastadapt.bench import CONFIGS, format_table, run
    >>> results, peak = run(["protonet-5w5s"], steps=2)  # doctest: +SKIP
    >>> print(format_table(results, peak))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fastadapt.algorithms import create_algorithm
from fastadapt.double_backward import kernels_available
from fastadapt.models import create_model
from fastadapt.runtime import cpu_model, native_bfloat16, tune_allocator
from fastadapt.tasks.spec import EpisodeBatch, TaskSpec
from fastadapt.tensor_pool import use_tensor_pool


def _maml_backbone(ways: int) -> dict[str, Any]:
    # MAML's Omniglot network: stride-2 convolutions, BatchNorm with batch statistics, mean readout.
    return {"in_channels": 1, "hidden": 64, "out_features": ways, "bn": "batch", "pool": "stride", "readout": "mean"}


PROTONET_BACKBONE: dict[str, Any] = {"in_channels": 1, "hidden": 64, "bn": "running", "pool": "max"}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmarked training setting.

    Args:
        algorithm: registered algorithm name (``maml``, ``protonet``, ``reptile``).
        ways, shots, queries: the task shape; ``tasks``: episodes per meta-batch.
        algorithm_args: keyword arguments of the algorithm.
        backbone_args: keyword arguments of ``conv4``.
        outer: outer optimiser ``(name, lr)``, ``name`` in ``{"adam", "sgd"}``.
        steps: timed steps of the full peer benchmark; ``quick_steps``: of ``fastadapt bench``.
        example_shape: shape of one input example.
    """

    algorithm: str
    ways: int
    shots: int
    queries: int
    tasks: int
    algorithm_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    outer: tuple[str, float] = ("adam", 1e-3)
    steps: int = 20
    quick_steps: int = 3
    example_shape: tuple[int, ...] = (1, 28, 28)

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec(self.ways, self.shots, self.queries)

    @property
    def unit(self) -> str:
        """What one meta-batch element is called in throughput figures."""
        return "episodes" if self.algorithm == "protonet" else "tasks"


_MAML = {"inner_lr": 0.4, "inner_steps": 1}
CONFIGS: dict[str, BenchConfig] = {
    "maml-5w1s-2nd": BenchConfig("maml", 5, 1, 15, 32, _MAML | {"first_order": False}, _maml_backbone(5)),
    "maml-5w1s-1st": BenchConfig("maml", 5, 1, 15, 32, _MAML | {"first_order": True}, _maml_backbone(5)),
    # 20-way: the paper's meta-batch 16, 5 inner steps, K query examples per class.
    "maml-20w1s-5steps": BenchConfig("maml", 20, 1, 1, 16, {"inner_lr": 0.1, "inner_steps": 5}, _maml_backbone(20)),
    "protonet-5w5s": BenchConfig("protonet", 5, 5, 15, 1, {}, PROTONET_BACKBONE, steps=200, quick_steps=20),
    "protonet-60w5s": BenchConfig("protonet", 60, 5, 5, 1, {}, PROTONET_BACKBONE, steps=50, quick_steps=5),
    # omniglot/reptile-5w1s training: 5 tasks of 5-way 10-shot, 5 inner Adam steps of 10 examples.
    "reptile-5w": BenchConfig(
        "reptile", 5, 10, 1, 5,
        {"inner_lr": 1e-3, "inner_steps": 5, "inner_batch": 10, "inner_optimizer": "adam"},
        _maml_backbone(5) | {"readout": "flatten"}, outer=("sgd", 1.0), steps=100, quick_steps=10,
    ),
}


def get_config(name: str) -> BenchConfig:
    """The config registered as ``name``; raises naming the valid ones."""
    if name not in CONFIGS:
        raise ValueError(f"unknown bench config {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name]


def synthetic_batch(config: BenchConfig, seed: int) -> EpisodeBatch:
    """A seeded meta-batch of Gaussian inputs with class-major episode labels.

    Returns:
        ``support_x`` ``(tasks, ways*shots, *example_shape)``, ``query_x``
        ``(tasks, ways*queries, *example_shape)`` and their ``(tasks, N)`` labels.
    """
    g = torch.Generator().manual_seed(seed)
    c = config

    def labels(per_class: int) -> Tensor:
        return torch.arange(c.ways).repeat_interleave(per_class).repeat(c.tasks, 1)  # (tasks, ways*per_class)

    support_x = torch.randn(c.tasks, c.ways * c.shots, *c.example_shape, generator=g)
    query_x = torch.randn(c.tasks, c.ways * c.queries, *c.example_shape, generator=g)
    return EpisodeBatch(support_x, labels(c.shots), query_x, labels(c.queries), c.spec)


def build_backbone(config: BenchConfig, seed: int = 0) -> nn.Module:
    """The config's Conv-4, initialised from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model("conv4", **config.backbone_args)


Backward = Callable[[EpisodeBatch], None]


def learner_backward(config: BenchConfig, backbone: nn.Module, channels_last: bool = False, **options: Any) -> Backward:
    """``meta_loss(batch).loss.backward()`` of the registered learner built with
    ``config.algorithm_args`` and ``options``; ``channels_last`` does what ``train.channels_last`` does."""
    learner = create_algorithm(config.algorithm, backbone, **config.algorithm_args, **options)
    if channels_last:
        learner.to(memory_format=torch.channels_last)

    def backward(batch: EpisodeBatch) -> None:
        learner.meta_loss(batch).loss.backward()

    return backward


def fastadapt_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    """The fastadapt side: the registered learner's ``meta_loss(batch).loss.backward()``."""
    return learner_backward(config, backbone)


def _second_order_maml(config: BenchConfig) -> bool:
    return config.algorithm == "maml" and not config.algorithm_args.get("first_order")


def speed_options(config: BenchConfig, lean: bool = False) -> dict[str, Any]:
    """The algorithm arguments of fastadapt's speed settings (README "Speed settings") for ``config``;
    ``lean=True``: the memory end of the trade-off, which leaves out ``task_workers`` (MAML, Reptile:
    one task's graph alive at a time) and adds ``compact_activations`` (ProtoNet, where the kernels
    compile: its first block's largest maps recomputed instead of kept, for a slower step).

    ``precision="bfloat16"`` (MAML, ProtoNet) only where this CPU has native bfloat16
    (``fastadapt.runtime.native_bfloat16``: AMX-BF16 / AVX512-BF16); elsewhere it is emulated
    and the step ran 5x slower (MAML 5w1s second order on an AVX2 EPYC, ``benchmarks/ablation.py``).
    MAML: query passes (bfloat16 where native) on channels-last parameters (``query_channels_last``),
    ``task_workers`` = the intra-op threads (tasks split over threads, one intra-op thread
    each) and, second order, ``second_order_kernels`` where fastadapt's C++ kernels compile
    here (``fastadapt.double_backward.kernels_available``; left out where they do not, and
    ``format_table`` says which) and, with several inner steps and workers,
    ``inner_checkpoint = inner_steps // task_workers`` (at least 1): the workers together keep
    no more inner-step graphs alive than one task without checkpointing (MAML 20-way 5-step on
    2 workers: the last 2 steps' graphs kept, 3 rebuilt), and ``query_compact_activations``
    where the kernels compile (smaller saved query activations: the memory two workers' graphs
    add); ProtoNet: bfloat16 backbone where
    native (plus channels-last parameters, applied by ``fast_backward``); its one episode per
    step has no tasks to split, so its lean settings trade speed for memory another way.
    Reptile: ``task_workers`` (plus channels-last parameters: faster convolutions with one
    intra-op thread per worker; it has no reduced-precision option) and ``fused_update`` where the
    kernels compile (the inner Adam step as one compiled pass).
    """
    options: dict[str, Any] = {"maml": {"query_channels_last": True}}.get(config.algorithm, {})
    if config.algorithm in REDUCED_PRECISION and native_bfloat16("cpu"):
        options["precision"] = "bfloat16"
    if not lean and config.algorithm in TASK_WORKERS:
        options["task_workers"] = torch.get_num_threads()
    if lean and config.algorithm == "protonet" and kernels_available():
        options["compact_activations"] = True
    if config.algorithm == "reptile" and kernels_available():
        options["fused_update"] = True
    if config.algorithm == "maml" and kernels_available():
        options["query_compact_activations"] = True
        if _second_order_maml(config):
            options["second_order_kernels"] = True
    kept = _fast_inner_checkpoint(config, options.get("task_workers", 1))
    if kept is not None:
        options["inner_checkpoint"] = kept
    return options


def _fast_inner_checkpoint(config: BenchConfig, workers: int) -> int | None:
    """``speed_options``' ``inner_checkpoint`` for ``workers`` task workers (None: not set)."""
    if not _second_order_maml(config):
        return None
    steps = config.algorithm_args.get("inner_steps", 1)  # MAML's default
    kept = max(1, steps // workers)
    return kept if kept < steps else None


REDUCED_PRECISION = ("maml", "protonet")
"""Algorithms whose speed settings include ``precision="bfloat16"`` where the CPU has it natively."""


TASK_WORKERS = ("maml", "reptile")
"""Algorithms whose speed settings split the tasks of a meta-batch over threads (``task_workers``)."""


CHANNELS_LAST = ("protonet", "reptile")
"""Algorithms whose speed settings include ``train.channels_last`` (MAML's double backward is slower with it)."""


def fast_backward(config: BenchConfig, backbone: nn.Module, lean: bool = False) -> Backward:
    """``fastadapt_backward`` with ``speed_options(config, lean)`` (and ``train.channels_last`` for ``CHANNELS_LAST``)."""
    options = speed_options(config, lean)
    return learner_backward(config, backbone, channels_last=config.algorithm in CHANNELS_LAST, **options)


def lean_backward(config: BenchConfig, backbone: nn.Module) -> Backward:
    """``fast_backward`` at the memory end of the trade-off (``speed_options(config, lean=True)``):
    MAML and Reptile without ``task_workers`` (the tasks of a meta-batch one after another on the
    calling thread, so one task's graph is alive at a time), ProtoNet with compact activations."""
    return fast_backward(config, backbone, lean=True)


VARIANTS: dict[str, Callable[[BenchConfig, nn.Module], Backward]] = {
    "default": fastadapt_backward, "fast": fast_backward, "lean": lean_backward,
}
"""The ways ``fastadapt bench`` times a config: defaults, all speed settings, their memory end."""


def has_lean_variant(config: BenchConfig) -> bool:
    """Whether ``lean_backward`` differs from ``fast_backward`` for ``config``."""
    return speed_options(config, lean=True) != speed_options(config)


def outer_optimizer(config: BenchConfig, params: Sequence[Tensor]) -> torch.optim.Optimizer:
    """The outer optimiser: Adam for MAML and ProtoNet, SGD (the Reptile update) for Reptile."""
    name, lr = config.outer
    return torch.optim.Adam(params, lr=lr) if name == "adam" else torch.optim.SGD(params, lr=lr)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions ``fn()`` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(
    size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32, probe_s: float = 0.05,
) -> float:
    """Best GFLOP/s of a square matmul in ``dtype`` with the current thread count.

    The side doubles from 256 up to ``size`` while one product takes under ``probe_s``
    seconds, so a dtype the CPU only emulates (bfloat16 without AMX/AVX512-BF16: 1.3 GFLOP/s on
    a 256x256 product on an AVX2 EPYC, ``benchmarks/results/peers-amd.jsonl``) is timed on a
    small product instead of stalling the run; where the hardware is fast it is ``size x size``.
    """
    g = torch.Generator().manual_seed(0)
    n = min(256, size)
    while True:
        a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
        start = time.perf_counter()
        torch.mm(a, b)  # warm-up, and the probe of the product's time
        if n >= size or time.perf_counter() - start >= probe_s:
            break
        n = min(2 * n, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


class Measurement(NamedTuple):
    """What ``measure`` returns: seconds of each timed step, FLOPs of one meta-gradient,
    and the process's peak resident memory."""

    times: list[float]
    flops: int
    peak_rss_mb: float


def flat_gradient(params: Sequence[Tensor]) -> Tensor:
    """``(P,)`` the parameters' ``.grad`` concatenated (zeros where a gradient is missing)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten() for p in params])


def meta_gradient(
    config: BenchConfig, make_backward: Callable[[BenchConfig, nn.Module], Backward] = fastadapt_backward,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(P,)`` flattened meta-gradient of batch 0 at the initial weights, computed in ``dtype``.

    ``make_backward`` is as in ``measure``; float64 separates an algorithm's differences
    from float32 rounding (e.g. Adam steps on the zero gradient of a bias before BatchNorm).
    """
    backbone = build_backbone(config).to(dtype)
    make_backward(config, backbone)(synthetic_batch(config, 0).to("cpu", dtype))
    return flat_gradient(list(backbone.parameters()))


def measure(
    config: BenchConfig,
    make_backward: Callable[[BenchConfig, nn.Module], Backward] = fastadapt_backward,
    steps: int = 3,
    warmup: int = 1,
    pool: int = 4,
    on_timed_start: Callable[[], object] | None = None,
    flops: bool = True,
) -> Measurement:
    """Time ``steps`` training steps after ``warmup`` untimed ones, in this process.

    The peak resident memory is taken after the timed steps, before the FLOPs of one step
    are counted (``count_flops``: tracing every op costs memory of its own).

    Args:
        make_backward: ``(config, backbone) -> backward``, where ``backward(batch)`` leaves
            the meta-gradient in the backbone parameters' ``.grad``.
        pool: distinct seeded meta-batches cycled through (seeds ``0..pool-1``).
        on_timed_start: called once, right before the first timed step (e.g. to open a
            measurement window of an external counter).
        flops: count the FLOPs of one step (``False``: ``Measurement.flops`` is 0).
    """
    step = TrainingStep(config, make_backward, max(1, min(pool, warmup + steps)))
    times = []
    for i in range(warmup + steps):
        if i == warmup and on_timed_start is not None:
            on_timed_start()
        start = time.perf_counter()
        step(i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    step.optimizer.zero_grad(set_to_none=True)
    return Measurement(times, count_flops(lambda: step.backward(step.batches[0])) if flops else 0, peak)


class TrainingStep:
    """``measure``'s training step: a fresh backbone, its ``backward``, the config's outer optimiser and
    ``pool`` seeded meta-batches (seeds ``0..pool-1``); ``step(i)`` takes one step on batch ``i % pool``."""

    def __init__(self, config: BenchConfig, make_backward: Callable[[BenchConfig, nn.Module], Backward], pool: int) -> None:
        backbone = build_backbone(config)
        self.backward = make_backward(config, backbone)
        self.batches = [synthetic_batch(config, seed) for seed in range(pool)]
        self.optimizer = outer_optimizer(config, list(backbone.parameters()))

    def __call__(self, i: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(self.batches[i % len(self.batches)])
        self.optimizer.step()


class BenchResult(NamedTuple):
    """One table row: ``config`` timed over ``steps`` steps (``per_step`` tasks or episodes each)."""

    config: str
    unit: str
    per_step: int
    steps: int
    median_s: float
    min_s: float
    max_s: float
    peak_rss_mb: float
    flops: int

    @property
    def throughput(self) -> float:
        return self.per_step / self.median_s

    @property
    def gflops(self) -> float:
        return self.flops / self.median_s / 1e9

    @staticmethod
    def of(name: str, config: BenchConfig, m: Measurement) -> BenchResult:
        return BenchResult(name, config.unit, config.tasks, len(m.times), statistics.median(m.times), min(m.times),
                           max(m.times), m.peak_rss_mb, m.flops)


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (raises for fewer than one)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def row_name(config: str, variant: str) -> str:
    """``config`` for the default variant, else ``"<config> (<variant>)"``."""
    return config if variant == "default" else f"{config} ({variant})"


def _child(name: str, steps: int | None, warmup: int, threads: int, allocator: bool, variant: str) -> BenchResult:
    if allocator:  # the engine's defaults
        tune_allocator()
        use_tensor_pool()
    set_threads(threads)
    config = get_config(name)
    steps = config.quick_steps if steps is None else steps
    m = measure(config, VARIANTS[variant], steps=steps, warmup=warmup)
    return BenchResult.of(row_name(name, variant), config, m)


def run(
    configs: Sequence[str] | None = None, steps: int | None = None, warmup: int = 1, threads: int | None = None,
    allocator: bool = True, fast: bool = False, lean: bool = False,
) -> tuple[list[BenchResult], float]:
    """Benchmark ``configs`` (default all), each in a fresh Python process.

    Args:
        steps: timed steps per config (default: each config's ``quick_steps``).
        threads: intra-op threads (default: torch's current number).
        allocator: apply ``fastadapt.runtime.tune_allocator`` and ``fastadapt.tensor_pool.use_tensor_pool``
            as the engine does by default.
        fast: also time each config with ``speed_options`` (rows named ``"<config> (fast)"``).
        lean: also time, for the configs whose speed settings include ``task_workers``, the
            same settings without workers (``lean_backward``; rows ``"<config> (lean)"``).

    Returns:
        The results and the float32 matmul peak (GFLOP/s) measured in this process.
    """
    names = list(CONFIGS) if configs is None else list(configs)
    for name in names:
        get_config(name)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    results = []
    runs = []
    for name in names:
        runs.append((name, "default"))
        if fast:
            runs.append((name, "fast"))
        if lean and has_lean_variant(CONFIGS[name]):
            runs.append((name, "lean"))
    for name, variant in runs:
        argv = [sys.executable, "-m", "fastadapt.bench", name, "--warmup", str(warmup), "--threads", str(threads)]
        argv += (["--steps", str(steps)] if steps is not None else []) + ([] if allocator else ["--no-tune-allocator"])
        done = subprocess.run(argv + ["--variant", variant], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"bench config {name!r} failed:\n{done.stderr.strip()}")
        results.append(BenchResult(**json.loads(done.stdout.strip().splitlines()[-1])))
    previous = torch.get_num_threads()
    set_threads(threads)
    try:
        return results, matmul_peak()
    finally:
        torch.set_num_threads(previous)


def format_table(
    results: Sequence[BenchResult], matmul_gflops: float, threads: int | None = None, allocator: bool = True,
) -> str:
    """A Markdown table of ``results``, with achieved GFLOP/s as a share of ``matmul_gflops``
    (a float32 matmul timed with ``threads`` threads, default torch's current number);
    ``allocator`` as given to ``run``."""
    lines = [
        "| config | throughput | median ms | min ms | max ms | peak RSS MB | GFLOP / step | GFLOP/s | % matmul peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.config} | {r.throughput:.2f} {r.unit}/s | {1e3 * r.median_s:.1f} | {1e3 * r.min_s:.1f} | "
            f"{1e3 * r.max_s:.1f} | {r.peak_rss_mb:.0f} | {r.flops / 1e9:.2f} | {r.gflops:.1f} | "
            f"{100 * r.gflops / matmul_gflops:.0f}% |"
        )
    threads = torch.get_num_threads() if threads is None else threads
    lines.append(f"\nfloat32 2048x2048 matmul peak: {matmul_gflops:.1f} GFLOP/s, {threads} threads, "
                 f"torch {torch.__version__}, {cpu_model()} ({torch.backends.cpu.get_cpu_capability()})")
    lines.append("allocator: " + ("glibc malloc defaults, PyTorch's CPU allocator" if not allocator else
                                  "tune_allocator + tensor pool (the engine's defaults)" if kernels_available() else
                                  "tune_allocator; no tensor pool (fastadapt's C++ extension does not compile here)"))
    if any(r.config.endswith(("(fast)", "(lean)")) and CONFIGS[r.config.split()[0]].algorithm in REDUCED_PRECISION
           for r in results):
        lines.append("MAML and ProtoNet (fast, lean) rows: " + (
            "bfloat16 (this CPU has native bfloat16)" if native_bfloat16("cpu") else
            "float32 (this CPU has no native bfloat16 instructions, so bfloat16 would be emulated and slower)"
        ))
    if any(r.config.endswith(("(fast)", "(lean)")) and _second_order_maml(CONFIGS[r.config.split()[0]]) for r in results):
        lines.append("second-order MAML (fast, lean) rows: " + (
            "with second_order_kernels" if kernels_available() else
            "without second_order_kernels (fastadapt's C++ kernels do not compile here: "
            "pip install 'fastadapt[kernels]' and a C++ compiler)"
        ))
    for algorithm, label, rows, option in (("maml", "MAML", ("fast", "lean"), "query_compact_activations"),
                                           ("reptile", "Reptile", ("fast", "lean"), "fused_update"),
                                           ("protonet", "ProtoNet", ("lean",), "compact_activations")):
        if any(r.config.endswith(tuple(f"({row})" for row in rows)) and CONFIGS[r.config.split()[0]].algorithm == algorithm
               for r in results):
            lines.append(f"{label} ({', '.join(rows)}) rows: " + (
                f"with {option}" if kernels_available() else
                f"without {option} (fastadapt's C++ extension does not compile here)"
            ))
    for r in results:
        config = CONFIGS[r.config.split()[0]]
        kept = _fast_inner_checkpoint(config, threads) if r.config.endswith("(fast)") else None
        if kept is not None:
            lines.append(f"{r.config}: inner_checkpoint={kept} (the last {kept} of {config.algorithm_args['inner_steps']} "
                         "inner steps' graphs kept per task, the others rebuilt in the backward)")
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one config of `fastadapt bench`, in this process (JSON line)")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-tune-allocator", action="store_true")
    parser.add_argument("--variant", choices=list(VARIANTS), default="default")
    args = parser.parse_args(argv)
    result = _child(args.config, args.steps, args.warmup, args.threads, not args.no_tune_allocator, args.variant)
    print(json.dumps(result._asdict()))


if __name__ == "__main__":
    _main()
