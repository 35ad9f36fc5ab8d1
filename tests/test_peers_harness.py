"""The round bookkeeping of ``benchmarks/peers/run.py`` (``--rounds``): order, pooling, peaks."""

import importlib.util
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "peers_run", Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "run.py")
run = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(run)  # the script puts benchmarks/ and benchmarks/peers/ on sys.path itself


def test_each_variant_leads_one_round_and_the_order_is_otherwise_kept():
    variants = ["plain", "higher", "fastadapt-fast"]
    orders = [run.round_order(variants, r) for r in range(4)]
    assert orders[0] == variants
    assert orders[1] == ["higher", "fastadapt-fast", "plain"]
    assert orders[2] == ["fastadapt-fast", "plain", "higher"]
    assert orders[3] == variants  # the cycle repeats
    assert all(sorted(o) == sorted(variants) for o in orders)


def test_rounds_pool_step_times_and_take_the_median_peak_rss():
    rounds = [{"times": [0.3, 0.1], "peak_rss_mb": 410.0, "flops": 7, "version": "v"},
              {"times": [0.2], "peak_rss_mb": 400.0, "flops": 7, "version": "v"},
              {"times": [0.5], "peak_rss_mb": 430.0, "flops": 7, "version": "v"}]
    pooled = run.pool_rounds(rounds)
    assert pooled["times"] == [0.3, 0.1, 0.2, 0.5]
    assert pooled["peak_rss_mb"] == 410.0 and pooled["peak_rss_mb_rounds"] == [410.0, 400.0, 430.0]
    assert pooled["rounds"] == 3 and pooled["flops"] == 7


def test_a_failed_round_fails_the_row():
    assert run.pool_rounds([{"times": [0.1], "peak_rss_mb": 1.0}, {"error": "boom"}]) == {"error": "boom"}


def test_the_higher_matmul_probe_divides_and_both_are_kept():
    probes = [{"matmul_gflops": 300.0, "matmul_bf16_gflops": 60.0}, {"matmul_gflops": 350.0, "matmul_bf16_gflops": 55.0}]
    peaks = run.probe_peaks(probes)
    assert peaks["matmul_gflops"] == 350.0 and peaks["matmul_bf16_gflops"] == 60.0
    assert peaks["matmul_gflops_probes"] == [300.0, 350.0]
    assert run.probe_peaks(probes[:1]) == probes[0]


def test_process_memory_is_read_in_mb_where_proc_exists():
    memory = run.process_memory_mb()
    if not Path("/proc/self/status").exists():
        assert memory == {}
        return
    assert set(memory) == {"VmHWM", "VmRSS", "RssAnon", "RssFile"}
    assert memory["VmHWM"] >= memory["VmRSS"] > 0
    assert abs(memory["RssAnon"] + memory["RssFile"] - memory["VmRSS"]) < 0.1 * memory["VmRSS"]  # + RssShmem
