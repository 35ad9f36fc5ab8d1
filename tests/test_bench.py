"""``fastadapt bench``: the CLI prints its table, and FLOP counting matches a hand count."""

import dataclasses
import json
import subprocess

import pytest
import torch
from torch import nn

import fastadapt.bench as bench
from fastadapt.bench import BenchConfig, BenchResult, count_flops, fastadapt_backward, format_table, synthetic_batch
from fastadapt.cli import main


def test_bench_cli_prints_table(capsys):
    assert main(["bench", "--configs", "protonet-5w5s", "--steps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    header, rule, row = out.splitlines()[:3]
    assert "throughput" in header and "% matmul peak" in header and "peak RSS MB" in header
    assert row.startswith("| protonet-5w5s | ") and "episodes/s" in row
    assert "matmul peak:" in out
    assert f"{bench.cpu_model()} ({torch.backends.cpu.get_cpu_capability()})" in out  # figures name their CPU


def test_bench_fast_adds_a_row_with_the_speed_settings(capsys):
    assert main(["bench", "--configs", "reptile-5w", "--steps", "1", "--threads", "2", "--fast"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| reptile-5w")]
    assert [r.split(" | ")[0] for r in rows] == ["| reptile-5w", "| reptile-5w (fast)"]


def test_bench_lean_adds_rows_only_where_they_differ_from_the_fast_ones(monkeypatch):
    """Without the extension ProtoNet's lean settings are its fast ones (no compact activations)."""
    calls = []
    monkeypatch.setattr(bench, "kernels_available", lambda: False)

    def fake_run(argv, **kwargs):
        calls.append((argv[3], argv[argv.index("--variant") + 1]))
        row = BenchResult(bench.row_name(argv[3], calls[-1][1]), "tasks", 1, 1, 0.1, 0.1, 0.1, 300.0, 10**9)
        return subprocess.CompletedProcess(argv, 0, json.dumps(row._asdict()) + "\n", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "matmul_peak", lambda: 100.0)
    results, _ = bench.run(["protonet-5w5s", "reptile-5w"], steps=1, threads=2, fast=True, lean=True)
    assert calls == [("protonet-5w5s", "default"), ("protonet-5w5s", "fast"),
                     ("reptile-5w", "default"), ("reptile-5w", "fast"), ("reptile-5w", "lean")]
    assert [r.config for r in results] == ["protonet-5w5s", "protonet-5w5s (fast)", "reptile-5w", "reptile-5w (fast)",
                                           "reptile-5w (lean)"]


@pytest.mark.parametrize("available", [True, False])
def test_lean_variant_is_the_speed_settings_without_workers_or_with_compact_protonet(monkeypatch, available):
    built = []
    monkeypatch.setattr(bench, "learner_backward", lambda config, backbone, channels_last=False, **options:
                        built.append((channels_last, options)))
    monkeypatch.setattr(bench, "kernels_available", lambda: available)
    for name in ("maml-5w1s-2nd", "reptile-5w"):
        config = bench.CONFIGS[name]
        bench.fast_backward(config, None)
        bench.lean_backward(config, None)
        (fast_layout, fast), (lean_layout, lean) = built[-2:]
        assert bench.has_lean_variant(config) and fast.pop("task_workers") == torch.get_num_threads()
        assert (lean_layout, lean) == (fast_layout, fast)
    protonet = bench.CONFIGS["protonet-60w5s"]
    bench.fast_backward(protonet, None)
    bench.lean_backward(protonet, None)
    (fast_layout, fast), (lean_layout, lean) = built[-2:]
    assert lean_layout == fast_layout is True  # channels-last both
    assert lean == fast | ({"compact_activations": True} if available else {})
    assert bench.has_lean_variant(protonet) is available
    table = format_table([BenchResult("protonet-60w5s (lean)", "episodes", 1, 1, 1.0, 1.0, 1.0, 900.0, 10**9)], 300.0, 2)
    assert table.splitlines()[-1] == "ProtoNet (lean) rows: " + (
        "with compact_activations" if available else
        "without compact_activations (fastadapt's C++ extension does not compile here)")


def test_fast_table_says_whether_second_order_maml_ran_the_compiled_kernels(monkeypatch):
    row = lambda name: BenchResult(name, "tasks", 32, 1, 0.5, 0.5, 0.5, 400.0, 10**9)
    for available, expected in ((True, "with second_order_kernels"), (False, "without second_order_kernels")):
        monkeypatch.setattr(bench, "kernels_available", lambda: available)
        assert bench.speed_options(bench.CONFIGS["maml-5w1s-2nd"]).get("second_order_kernels") is (available or None)
        assert "second_order_kernels" not in bench.speed_options(bench.CONFIGS["maml-5w1s-1st"])
        table = format_table([row("maml-5w1s-2nd"), row("maml-5w1s-2nd (fast)")], 300.0, threads=2)
        assert expected in table.splitlines()[-2]
        compact = "with query_compact_activations" if available else "without query_compact_activations"
        assert compact in table.splitlines()[-1]
        assert bench.speed_options(bench.CONFIGS["maml-5w1s-1st"]).get("query_compact_activations") is (available or None)
        assert bench.speed_options(bench.CONFIGS["reptile-5w"]).get("fused_update") is (available or None)
        reptile = format_table([row("reptile-5w (lean)")], 300.0, threads=2).splitlines()[-1]
        assert reptile.startswith("Reptile (fast, lean) rows: " + ("with fused_update" if available else "without fused_update"))
        pool = "tune_allocator + tensor pool" if available else "no tensor pool (fastadapt's C++ extension does not compile"
        assert pool in table
    # first-order and non-MAML fast rows say nothing about kernels; non-MAML ones nothing about compact activations
    assert "second_order_kernels" not in format_table([row("maml-5w1s-1st (fast)"), row("reptile-5w (fast)")], 300.0, 2)
    assert "compact" not in format_table([row("protonet-5w5s (fast)"), row("reptile-5w (fast)")], 300.0, 2)
    assert "query_compact_activations" not in bench.speed_options(bench.CONFIGS["reptile-5w"])
    assert "fused_update" not in bench.speed_options(bench.CONFIGS["maml-5w1s-1st"])
    assert "query_compact_activations" not in bench.speed_options(bench.CONFIGS["protonet-5w5s"])
    assert "allocator: glibc malloc defaults" in format_table([row("reptile-5w")], 300.0, 2, allocator=False)


def test_fast_second_order_maml_with_workers_keeps_as_many_step_graphs_as_one_unchecked_task(monkeypatch):
    monkeypatch.setattr(bench, "kernels_available", lambda: False)
    twenty = bench.CONFIGS["maml-20w1s-5steps"]
    for threads, kept in ((1, None), (2, 2), (3, 1), (4, 1), (5, 1)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        assert bench.speed_options(twenty).get("inner_checkpoint") == kept
        assert "inner_checkpoint" not in bench.speed_options(twenty, lean=True)
        assert "inner_checkpoint" not in bench.speed_options(bench.CONFIGS["maml-5w1s-2nd"])  # one step: nothing to rebuild
    first_order = dataclasses.replace(twenty, algorithm_args=twenty.algorithm_args | {"first_order": True})
    assert "inner_checkpoint" not in bench.speed_options(first_order)
    row = lambda name: BenchResult(name, "tasks", 16, 1, 1.0, 1.0, 1.0, 400.0, 10**9)
    table = format_table([row("maml-20w1s-5steps"), row("maml-20w1s-5steps (fast)"), row("maml-5w1s-2nd (fast)")], 300.0, 2)
    assert table.splitlines()[-1] == ("maml-20w1s-5steps (fast): inner_checkpoint=2 (the last 2 of 5 inner steps' graphs "
                                      "kept per task, the others rebuilt in the backward)")
    assert "inner_checkpoint" not in format_table([row("maml-20w1s-5steps (fast)")], 300.0, 1)


def test_bench_unknown_config(capsys):
    assert main(["bench", "--configs", "maml-5w1s"]) == 1
    assert "unknown bench config 'maml-5w1s'" in capsys.readouterr().err


def test_protonet_step_flops_match_hand_count():
    tasks, ways, shots, queries, d_in, d = 2, 3, 2, 4, 5, 7
    config = BenchConfig("protonet", ways, shots, queries, tasks, example_shape=(d_in,))
    backbone = nn.Linear(d_in, d)
    backward = fastadapt_backward(config, backbone)
    flops = count_flops(lambda: backward(synthetic_batch(config, 0)))
    n_support, n_query = ways * shots, ways * queries
    n = tasks * (n_support + n_query)
    linear = 2 * n * d_in * d  # forward addmm; backward: the weight gradient only (inputs need none)
    protos = 2 * tasks * ways * n_support * d  # one-hot^T @ z_support, and its gradient w.r.t. z_support
    cross = 2 * tasks * n_query * d * ways  # z_query @ protos^T, and its gradients w.r.t. both sides
    assert flops == 2 * linear + 2 * protos + 3 * cross
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_measure_opens_the_timed_window_after_warmup_and_can_skip_flop_counting():
    config = BenchConfig("protonet", 3, 2, 4, 2, example_shape=(5,))
    events = []

    def make_backward(config, _backbone):
        backbone = nn.Linear(5, 7)  # the Conv-4 that measure builds takes images, not (5,) vectors
        inner = fastadapt_backward(config, backbone)
        return lambda batch: (events.append("step"), inner(batch))

    m = bench.measure(config, make_backward, steps=2, warmup=3, on_timed_start=lambda: events.append("open"), flops=False)
    assert events == ["step"] * 3 + ["open"] + ["step"] * 2
    assert len(m.times) == 2 and m.flops == 0 and m.peak_rss_mb > 0


def test_speed_settings_use_bfloat16_only_where_the_cpu_has_it_natively(monkeypatch):
    row = lambda name: BenchResult(name, "tasks", 32, 1, 0.5, 0.5, 0.5, 400.0, 10**9)
    for native in (True, False):
        monkeypatch.setattr(bench, "native_bfloat16", lambda device_type, native=native: native)
        for name in ("maml-5w1s-2nd", "maml-5w1s-1st", "protonet-5w5s", "protonet-60w5s"):
            assert bench.speed_options(bench.CONFIGS[name]).get("precision") == ("bfloat16" if native else None)
        assert "precision" not in bench.speed_options(bench.CONFIGS["reptile-5w"])
        assert bench.speed_options(bench.CONFIGS["maml-5w1s-1st"])["query_channels_last"] is True
        table = format_table([row("protonet-5w5s"), row("protonet-5w5s (fast)")], 300.0, threads=2)
        assert ("rows: bfloat16 (this CPU has native" if native else "rows: float32 (this CPU has no native") in table
    # tables without a fast or lean MAML/ProtoNet row say nothing about precision
    assert "bfloat16" not in format_table([row("protonet-5w5s"), row("reptile-5w (fast)")], 300.0, threads=2)


def test_matmul_peak_times_a_smaller_product_where_one_is_slow(monkeypatch):
    sizes = []
    real_mm = torch.mm

    def slow_mm(a, b):  # stands in for an emulated dtype: every product takes the probe's time
        sizes.append(a.shape[0])
        return real_mm(a, b)

    monkeypatch.setattr(bench.torch, "mm", slow_mm)
    assert bench.matmul_peak(size=1024, repeats=2, probe_s=0.0) > 0
    assert sizes == [256, 256, 256]  # the probe (also the warm-up), then the repeats
    sizes.clear()
    bench.matmul_peak(size=1024, repeats=1, probe_s=float("inf"))
    assert sizes == [256, 512, 1024, 1024]  # fast: doubled up to the requested size
