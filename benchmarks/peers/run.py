"""fastadapt and its peers on identical work, side by side (issue 6).

    /work/bench-venv/bin/python benchmarks/peers/run.py [--smoke] [--configs ...] [--variants ...] [--threads 2]

Run with the benchmark environment of ``benchmarks/peers/setup_env.sh`` (the peers are
never dependencies of the package). Every (setting, config, variant) runs in its own
process: same Conv-4 and seeded synthetic Omniglot-shaped batches (``fastadapt.bench``),
same threads, warm-up excluded; FLOPs counted once per variant with
``torch.utils.flop_counter``; float32 and bfloat16 matmul peaks (2048x2048, or smaller where
one product is slow: ``fastadapt.bench.matmul_peak``) timed in their own process per
setting; the meta-gradient of the first batch at the initial weights compared with the
plain PyTorch loop's. Three settings: ``shipped`` (glibc malloc defaults; fastadapt calls
``fastadapt.runtime.tune_allocator()`` and ``fastadapt.tensor_pool.use_tensor_pool()`` as its
engine does by default, the peers do not), ``tuned`` (``common.TUNED_MALLOC`` in every
variant's environment, nobody calls either) and ``pooled`` (``tuned``'s environment and every
variant, the peers included, on fastadapt's tensor pool: the pool's effect apart from the
libraries'). Rows go to ``results/peers.jsonl`` (``--smoke``: ``results/peers-smoke.jsonl``);
``python benchmarks/table.py`` renders them into ``benchmarks/README.md``.

``--rounds R`` (for VMs whose speed drifts over minutes): each config's variants run R times,
each time in a fresh process with ``ceil(steps / R)`` timed steps, the order rotated by one
variant per round (round r starts with the r-th variant), so that a slow spell of the machine
falls on every variant alike. A row then pools the step times of its R processes (median,
min, max over all of them), reports the median of their peak RSS (all R in
``peak_rss_mb_rounds``), and the matmul peaks are probed before and after each config's rounds
(the higher of the two divides; both in ``matmul_*_probes``).

Every row also carries ``memory_after_mb`` (``VmHWM``, ``VmRSS``, ``RssAnon``, ``RssFile`` of
``/proc/self/status`` after the timed steps and the FLOP count; per round in
``memory_after_mb_rounds``): peak RSS moved by 16-26 MB between runs for every variant alike on one
machine, and the split into anonymous and file-backed pages says which kind moved.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from common import TUNED_MALLOC, append_row, environment, process_memory_mb  # noqa: E402

from fastadapt.bench import CONFIGS, BenchConfig, matmul_peak, measure, meta_gradient, set_threads  # noqa: E402

VARIANTS = {"plain": "plain_torch", "fastadapt": "fastadapt_side", "fastadapt-threads": "fastadapt_threads",
            "fastadapt-fast": "fastadapt_fast", "fastadapt-lean": "fastadapt_lean",
            "higher": "higher_side", "learn2learn": "l2l_side"}
SETTINGS = {"shipped": "as shipped (malloc default; fastadapt: tune_allocator + tensor pool)",
            "tuned": "identical malloc (env, all)", "pooled": "identical malloc + tensor pool (all)"}
REFERENCE = "plain"


def tunes_allocator(setting: str, variant: str) -> bool:
    """Whether the variant calls ``tune_allocator`` in ``setting`` (fastadapt as shipped, as its engine does)."""
    return variant.startswith("fastadapt") and setting == "shipped"


def uses_pool(setting: str, variant: str) -> bool:
    """Whether the variant runs on fastadapt's tensor pool in ``setting`` (fastadapt as shipped; everyone pooled)."""
    return tunes_allocator(setting, variant) or setting == "pooled"


def smoke_config(config: BenchConfig) -> BenchConfig:
    """The same work in miniature: at most 2 tasks per meta-batch, at most 10 ways for ProtoNet."""
    ways = min(config.ways, 10) if config.algorithm == "protonet" else config.ways
    return dataclasses.replace(config, tasks=min(config.tasks, 2), ways=ways)


def child(args: argparse.Namespace) -> None:
    if tunes_allocator(args.setting, args.variant):
        from fastadapt.runtime import tune_allocator

        tune_allocator()
    if uses_pool(args.setting, args.variant):
        from fastadapt.tensor_pool import use_tensor_pool

        if not use_tensor_pool():
            raise RuntimeError("the tensor pool needs fastadapt's C++ extension, which cannot be built here")
    set_threads(args.threads)
    if args.variant == "matmul":
        print(json.dumps({"matmul_gflops": matmul_peak(), "matmul_bf16_gflops": matmul_peak(dtype=torch.bfloat16)}))
        return
    side = importlib.import_module(VARIANTS[args.variant])
    config = smoke_config(CONFIGS[args.config]) if args.smoke else CONFIGS[args.config]
    m = measure(config, side.BACKWARD[config.algorithm], steps=args.steps, warmup=args.warmup)
    memory = process_memory_mb()  # after the FLOP count: its anonymous / file-backed split, for drifts between runs
    # After the timing, so that neither check counts in the peak memory ("-": another round checks it).
    if args.gradient_out != "-":
        torch.save({dtype: meta_gradient(config, side.BACKWARD[config.algorithm], getattr(torch, dtype))
                    for dtype in ("float32", "float64")}, args.gradient_out)
    print(json.dumps({"times": m.times, "flops": m.flops, "peak_rss_mb": m.peak_rss_mb, "version": side.version(),
                      "loaded_as": side.NOTE, "per_step": config.tasks, "unit": config.unit,
                      "memory_after_mb": memory}))


def spawn(args: argparse.Namespace, setting: str, config: str, variant: str, gradient_out: str, steps: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env |= TUNED_MALLOC if setting in ("tuned", "pooled") else {}
    argv = [sys.executable, __file__, "--child", setting, config, variant, "--gradient-out", gradient_out,
            "--threads", str(args.threads), "--steps", str(steps), "--warmup", str(args.warmup)]
    done = subprocess.run(argv + (["--smoke"] if args.smoke else []), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        return {"error": lines[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_relative_error(gradient: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|g - g_ref| / max|g_ref|`` over the flattened meta-gradient."""
    return float((gradient - reference).abs().max() / reference.abs().max())


def round_order(variants: list[str], round_: int) -> list[str]:
    """The variants in the order of round ``round_``: rotated left by one variant per round."""
    shift = round_ % len(variants)
    return variants[shift:] + variants[:shift]


def pool_rounds(results: list[dict]) -> dict:
    """One result from the processes of a variant's rounds: all step times, the median peak RSS."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    rss = [r["peak_rss_mb"] for r in results]
    return results[0] | {"times": [t for r in results for t in r["times"]], "peak_rss_mb": statistics.median(rss),
                         "peak_rss_mb_rounds": rss, "rounds": len(results),
                         "memory_after_mb_rounds": [r.get("memory_after_mb", {}) for r in results]}


def probe_peaks(probes: list[dict]) -> dict:
    """The matmul peaks as the higher of the probes so far, each probe's figures kept."""
    peaks = {key: max(p[key] for p in probes) for key in ("matmul_gflops", "matmul_bf16_gflops")}
    return peaks | {f"{key}_probes": [p[key] for p in probes] for key in peaks} if len(probes) > 1 else peaks


def figures(result: dict, peaks: dict) -> dict:
    """Step-time statistics and achieved GFLOP/s, also as a percentage of the float32 and bfloat16 matmul peaks."""
    times = sorted(result.pop("times"))
    median = statistics.median(times)
    gflops = result["flops"] / median / 1e9
    return result | peaks | {"steps": len(times), "median_ms": 1e3 * median, "min_ms": 1e3 * times[0],
                             "max_ms": 1e3 * times[-1], "throughput": result["per_step"] / median, "gflops": gflops,
                             "pct_matmul_peak": 100 * gflops / peaks["matmul_gflops"],
                             "pct_bf16_matmul_peak": 100 * gflops / peaks["matmul_bf16_gflops"]}


def measure_setting(args: argparse.Namespace, setting: str, run_id: str, scratch: Path) -> None:
    probes = [spawn(args, setting, "-", "matmul", "-")]
    peaks = probe_peaks(probes)
    print(f"\n## {SETTINGS[setting]}: square matmul peak {peaks['matmul_gflops']:.1f} GFLOP/s float32, "
          f"{peaks['matmul_bf16_gflops']:.1f} bfloat16, {args.threads} threads"
          + (f", {args.rounds} interleaved rounds" if args.rounds > 1 else ""), flush=True)
    print("| config | variant | throughput | median ms | min-max ms | peak RSS MB | GFLOP/step | GFLOP/s | % peak f32 (bf16) | "
          "grad rel err f32 / f64 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.configs:
        algorithm = CONFIGS[name].algorithm
        variants = [REFERENCE] + [v for v in args.variants if v != REFERENCE] if REFERENCE in args.variants else args.variants
        variants = [v for v in variants if algorithm in importlib.import_module(VARIANTS[v]).BACKWARD]
        if not variants:
            continue
        steps = math.ceil((args.steps or CONFIGS[name].steps) / args.rounds)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in round_order(variants, round_):
                gradient_out = str(scratch / f"{setting}-{name}-{variant}.pt") if round_ == 0 else "-"
                results[variant].append(spawn(args, setting, name, variant, gradient_out, steps))
        if args.rounds > 1:  # the probes around this config's rounds
            probes = probes[-1:] + [spawn(args, setting, "-", "matmul", "-")]
            peaks = probe_peaks(probes)
        write_rows(args, setting, run_id, scratch, name, {v: pool_rounds(r) for v, r in results.items()}, peaks)


def write_rows(args: argparse.Namespace, setting: str, run_id: str, scratch: Path, name: str,
               measured: dict[str, dict], peaks: dict) -> None:
    """One row per variant of config ``name`` (``measured``: variant -> pooled result), appended and printed."""
    for variant, result in measured.items():
        gradient_out = scratch / f"{setting}-{name}-{variant}.pt"
        row = environment() | {"run": run_id, "setting": setting, "malloc": "default" if setting == "shipped" else "tuned",
                               "tune_allocator": tunes_allocator(setting, variant),
                               "tensor_pool": uses_pool(setting, variant), "config": name,
                               "variant": variant, "smoke": args.smoke, "warmup": args.warmup}
        if "error" not in result:
            row |= figures(result, peaks)
            reference = scratch / f"{setting}-{name}-{REFERENCE}.pt"
            if reference.exists() and variant != REFERENCE:
                ours, ref = torch.load(gradient_out), torch.load(reference)
                row["grad_max_rel_err"] = max_relative_error(ours["float32"], ref["float32"])
                row["grad_max_rel_err_f64"] = max_relative_error(ours["float64"], ref["float64"])
        append_row(args.results, row)
        print(line(row), flush=True)


def line(r: dict) -> str:
    if "error" in r:
        return f"| {r['config']} | {r['variant']} | failed: {r['error']} | | | | | | | |"
    err = f"{r['grad_max_rel_err']:.1e} / {r['grad_max_rel_err_f64']:.1e}" if "grad_max_rel_err" in r else "-"
    return (f"| {r['config']} | {r['variant']} {r['version']} | {r['throughput']:.2f} {r['unit']}/s | {r['median_ms']:.1f} | "
            f"{r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['peak_rss_mb']:.0f} | {r['flops'] / 1e9:.2f} | {r['gflops']:.1f} | "
            f"{r['pct_matmul_peak']:.0f}% ({r['pct_bf16_matmul_peak']:.0f}%) | {err} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: each config's; --smoke: 2)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds per config: each variant R times in rotated order (module docstring)")
    parser.add_argument("--smoke", action="store_true", help="2 timed steps, 1 warm-up, meta-batches of at most 2 tasks")
    parser.add_argument("--results", default=None, help="results/NAME.jsonl (default peers, or peers-smoke with --smoke)")
    parser.add_argument("--child", nargs=3, metavar=("SETTING", "CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--gradient-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.setting, args.config, args.variant = args.child
        child(args)
        return
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.smoke:
        args.steps, args.warmup = args.steps or 2, 1
    args.results = args.results or ("peers-smoke" if args.smoke else "peers")
    set_threads(args.threads)
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    with tempfile.TemporaryDirectory() as scratch:
        for setting in args.settings:
            measure_setting(args, setting, run_id, Path(scratch))


if __name__ == "__main__":
    main()
