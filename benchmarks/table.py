"""Regenerate the tables of ``benchmarks/README.md`` from the JSON rows in ``results/``.

    python benchmarks/table.py

Each table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` markers.
"""

from __future__ import annotations

import re
from pathlib import Path

from common import read_rows

README = Path(__file__).resolve().parent / "README.md"


def reproductions() -> str:
    lines = [
        "| recipe | paper | ours (mean ± 95% CI, n) | BN at test | iterations (recipe) | wall time (train, validation, test) | machine | commit | command |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in read_rows("reproductions"):
        paper = "-" if r["paper"] is None else f"{r['paper']}" + (f" ± {r['paper_ci95']}" if r.get("paper_ci95") else "")
        note = f" — {r['note']}" if r.get("note") else ""
        digits = 3 if r.get("metric") == "mse" else 2
        lines.append(
            f"| `{r['recipe']}` | {paper} | **{r['mean']:.{digits}f} ± {r['ci95']:.{digits}f}** (n={r['n']}, {r['spec']}) | {r['bn']} | "
            f"{r['iterations']} ({r['paper_iterations']}) | {r['train_seconds'] / 60:.1f} min | {r['cpus']} CPU, {r['threads']} threads, "
            f"malloc {r['malloc']}{'' if 'cpu' not in r else ', ' + _cpu(r)} | {r['commit']} | `{r['command']}`{note} |"
        )
    return "\n".join(lines)


def latest(name: str, key: str = "commit") -> list[dict]:
    """The rows of ``results/<name>.jsonl`` that share the last row's ``key`` (its commit or run)."""
    rows = read_rows(name)
    return [r for r in rows if r[key] == rows[-1][key]] if rows else []


def sampling() -> str:
    from sampling import table

    return table(latest("sampling"))


def task_batching() -> str:
    lines = ["| config | batching | median ms / meta-iteration | min ms | peak RSS MB | threads | commit |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['config']} | {r['batching']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['threads']} | {r['commit']} |" for r in latest("task_batching")]
    return "\n".join(lines)


PEER_SETTINGS = {"shipped": "as shipped", "tuned": "identical malloc", "pooled": "identical malloc + tensor pool (all)"}


def _peer_values(r: dict, rows: list[dict], key: str) -> list[float]:
    """``key`` of the peers' rows in ``r``'s setting and config; empty for a peer's own row."""
    if not r["variant"].startswith("fastadapt"):
        return []
    return [p[key] for p in rows if p["setting"] == r["setting"] and p["config"] == r["config"]
            and not p["variant"].startswith("fastadapt") and key in p]


def _speedup(r: dict, rows: list[dict]) -> str:
    """fastadapt's throughput over the best peer's in the same setting and config."""
    peers = _peer_values(r, rows, "throughput")
    return f"{r['throughput'] / max(peers):.2f}x" if peers else ""


def _rss_margin(r: dict, rows: list[dict]) -> str:
    """fastadapt's peak RSS minus the lowest peer's in the same setting and config (MB)."""
    peers = _peer_values(r, rows, "peak_rss_mb")
    return f"{r['peak_rss_mb'] - min(peers):+.0f}" if peers else ""


def latest_per_setting(name: str) -> list[dict]:
    """The rows of each setting's last run in ``results/<name>.jsonl`` (settings in order of appearance)."""
    rows = read_rows(name)
    last = {r["setting"]: r["run"] for r in rows}
    return [r for setting, run in last.items() for r in rows if r["setting"] == setting and r["run"] == run]


def peers(rows: list[dict] | None = None) -> str:
    """``rows`` of ``benchmarks/peers/run.py`` (default: ``results/peers.jsonl``'s last run)."""
    rows = latest("peers", key="run") if rows is None else rows
    lines = ["| setting (matmul peak f32 / bf16) | config | variant | throughput | vs best peer | median ms (min-max) | "
             "peak RSS MB | vs lowest peer MB | GFLOP / step | GFLOP/s | % of matmul peak f32 (bf16) | meta-grad max rel err f32 (f64) | threads | "
             "commit |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        head = f"| {PEER_SETTINGS[r['setting']]} | {r['config']} | {r['variant']}"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error']} | | | | | | | | | {r['threads']} | {r['commit']} |")
            continue
        err = (f"{r['grad_max_rel_err']:.1e} ({r['grad_max_rel_err_f64']:.1e})" if "grad_max_rel_err" in r
               else "reference")
        bf16 = "matmul_bf16_gflops" in r  # rows up to 1041278 timed the float32 peak only
        peak = f"{r['matmul_gflops']:.0f}" + (f" / {r['matmul_bf16_gflops']:.0f}" if bf16 else "")
        pct = f"{r['pct_matmul_peak']:.0f}%" + (f" ({r['pct_bf16_matmul_peak']:.0f}%)" if bf16 else "")
        lines.append(
            f"| {PEER_SETTINGS[r['setting']]} ({peak}) | {r['config']} | {r['variant']} {r['version']} | "
            f"{r['throughput']:.2f} {r['unit']}/s | {_speedup(r, rows)} | {r['median_ms']:.0f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | "
            f"{r['peak_rss_mb']:.0f} | {_rss_margin(r, rows)} | {r['flops'] / 1e9:.1f} | {r['gflops']:.1f} | {pct} | {err} | "
            f"{r['threads']} | {r['commit']} |"
        )
    return "\n".join(lines)


def distributed(rows: list[dict] | None = None) -> str:
    """1 process x 2 threads vs 2 processes x 1 thread, from ``benchmarks/distributed.py`` (latest run)."""
    if rows is None:
        rows = latest("distributed", key="run")
    lines = ["| recipe | processes x threads | tasks / meta-batch | episodes/s | vs 1 x 2 | median ms / step | "
             "communication share (max rank) | commit |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        base = [b for b in rows if b["recipe"] == r["recipe"] and b["processes"] == 1]
        ratio = f"{r['episodes_per_s'] / base[0]['episodes_per_s']:.2f}x" if base else ""
        lines.append(
            f"| `{r['recipe']}` | {r['processes']} x {r['threads_per_process']} | {r['batch_size']} | "
            f"{r['episodes_per_s']:.1f} | {ratio} | {r['median_ms']:.0f} | {100 * r['comm_share']:.1f}% "
            f"({100 * r['comm_share_max']:.1f}%) | {r['commit']} |"
        )
    return "\n".join(lines)


def precision() -> str:
    """``benchmarks/precision.py`` (latest commit's rows)."""
    lines = ["| config | variant | median ms / step (min) | vs float32 | meta-gradient rel. error vs float64 | data | threads | commit |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    lines += [f"| {r['config']} | {r['variant']} | {1e3 * r['median_s']:.0f} ({1e3 * r['min_s']:.0f}) | "
              f"{r['speedup_vs_float32']:.2f}x | {r['grad_rel_error_vs_float64']:.1e} | {r['data']} | {r['threads']} | "
              f"{r['commit']} |" for r in latest("precision")]
    return "\n".join(lines)


def ablation() -> str:
    """``benchmarks/ablation.py`` (all rows, each group an experiment of its own commit; a group's first
    variant is its baseline)."""
    lines = ["| config | variant | options | median ms / step (repeats) | vs first | peak RSS MB | threads | cpu | commit |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in read_rows("ablation"):
        options = " ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        repeats = ", ".join(f"{1e3 * t:.0f}" for t in r["repeat_medians_s"])
        rss = "one process (alternate)" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['config']} | {r['variant']} | `{options}` | {1e3 * r['median_s']:.1f} ({repeats}) | "
                     f"{r['speedup_vs_first']:.2f}x | {rss} | {r['threads']} | {_cpu(r)} | {r['commit']} |")
    return "\n".join(lines)


def op_ceiling() -> str:
    """``benchmarks/op_ceiling.py`` (all rows)."""
    lines = ["| config | variant | counted GFLOP / step | calls (distinct) | alone, 1 thread: ms (% of its matmul peak) | "
             "alone, 2 threads: ms (% of its matmul peak) | matmul peak 1 / 2 threads GFLOP/s | cpu | commit |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in read_rows("op_ceiling"):
        ms, pct, peak = r["alone_ms"], r["ceiling_pct"], r["matmul_gflops"]
        lines.append(f"| {r['config']} | {r['variant']} | {r['counted_gflop']:.2f} | {r['calls']} ({r['distinct_calls']}) | "
                     f"{ms['1']:.1f} ({pct['1']:.0f} %) | {ms['2']:.1f} ({pct['2']:.0f} %) | {peak['1']:.0f} / {peak['2']:.0f} | "
                     f"{_cpu(r)} | {r['commit']} |")
    return "\n".join(lines)


def _cpu(r: dict) -> str:
    """The row's processor, as ``common.environment`` records it (rows before 2026-12-06 did not)."""
    if "cpu" not in r:
        return "not recorded"
    return f"{r['cpu']}, {r['cpu_capability']}" + (", bf16" if r["bf16_native"] else "")


def functional_call() -> str:
    """``benchmarks/functional_call_cost.py`` (latest commit's rows)."""
    from functional_call_cost import CALLS

    lines = ["| backbone (config) | images | `model(x)` µs | `forward` µs | `forward` with `tensor_aliases` µs | threads | commit |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['config']} | {r['images']} | " + " | ".join(f"{r['median_us'][c]:.0f}" for c in CALLS) +
              f" | {r['threads']} | {r['commit']} |" for r in latest("functional_call")]
    return "\n".join(lines)


def heap() -> str:
    """``benchmarks/heap_peak.py`` (latest commit's rows)."""
    from heap_peak import table

    return table(latest("heap"))


def inner_checkpoint() -> str:
    """``benchmarks/inner_checkpoint.py`` (latest commit's rows; ratios against the plain loop of the same inner steps)."""
    rows = latest("inner_checkpoint")
    plain = {r["inner_steps"]: r for r in rows if r["variant"] == "plain"}
    lines = ["| config | inner steps | variant | median ms / step (min-max) | vs plain | peak RSS MB (vs plain) | "
             "saved-tensor peak MB | threads | commit |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        base = plain.get(r["inner_steps"])
        speed = f"{base['median_s'] / r['median_s']:.2f}x" if base else ""
        rss = f" ({r['peak_rss_mb'] - base['peak_rss_mb']:+.0f})" if base else ""
        saved = "" if r["saved_peak_mb"] is None else f"{r['saved_peak_mb']:.1f}"
        lines.append(f"| {r['config']} | {r['inner_steps']} | {r['variant']} | {1e3 * r['median_s']:.0f} "
                     f"({1e3 * r['min_s']:.0f}-{1e3 * r['max_s']:.0f}) | {speed} | {r['peak_rss_mb']:.0f}{rss} | {saved} | "
                     f"{r['threads']} | {r['commit']} |")
    return "\n".join(lines)


PEER_RUNS: dict[str, tuple[str, ...]] = {
    "peers_amd": ("peers-amd",), "peers_epyc1": ("peers-epyc1",), "peers_xeon": ("peers-xeon",),
    "peers_xeon_rounds": ("peers-xeon-rounds", "peers-xeon-rounds-protonet"),
    "peers_xeon_compact": ("peers-xeon-compact",), "peers_xeon_compact2": ("peers-xeon-compact2",),
    "peers_xeon_final": ("peers-xeon-final",), "peers_xeon_20w": ("peers-xeon-20w",),
    "peers_xeon_reptile": ("peers-xeon-reptile",), "peers_xeon_reptile5": ("peers-xeon-reptile5",),
    "peers_xeon_final2": ("peers-xeon-final2",), "peers_xeon_protonet_lean": ("peers-xeon-protonet-lean",),
    "peers_xeon_final3": ("peers-xeon-final3",),
}
"""Peers tables of one machine's runs: table name -> the results files whose rows it shows (one run's
rows per config: "vs best peer" compares all rows of a config and setting in the table)."""

TABLES = {"reproductions": reproductions, "sampling": sampling, "task_batching": task_batching, "peers": peers,
          **{table: lambda files=files: peers(rows=[r for f in files for r in latest_per_setting(f)])
             for table, files in PEER_RUNS.items()},
          "distributed": distributed, "precision": precision, "ablation": ablation, "functional_call": functional_call,
          "heap": heap, "inner_checkpoint": inner_checkpoint, "op_ceiling": op_ceiling}


def main() -> None:
    text = README.read_text()
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{README} has no <!-- table:{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    README.write_text(text)


if __name__ == "__main__":
    main()
