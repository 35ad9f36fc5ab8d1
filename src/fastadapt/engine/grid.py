"""One trained learner evaluated across several task specs (ways x shots) in one call.

Metric learners and ProtoNets can be tested on other ways and shots than they were
trained on; ``evaluate_grid`` runs the test protocol for every combination, with the
same test classes, episode seed and BN policy, and writes ``eval_grid.json`` into the
run directory, which ``fastadapt plot`` turns into accuracy-against-shots and
accuracy-against-ways plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fastadapt.config import Config, apply_overrides
from fastadapt.engine import build, distributed
from fastadapt.engine.evaluate import EvalResult
from fastadapt.engine.runs import load_on_ranks, run_protocol
from fastadapt.tasks.sampler import EpisodeSampler

GRID_FILE = "eval_grid.json"


def evaluate_grid(
    path: str | Path,
    ways: Sequence[int] | None,
    shots: Sequence[int] | None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[Config, list[EvalResult]]:
    """Test a trained run (directory or checkpoint) on every ``(ways, shots)`` combination.

    ``None`` (or empty) for ``ways`` or ``shots`` keeps the run's evaluation value. Returns
    the config and one result per combination (ways-major order); when ``path`` is a run
    directory the results are also written to ``<run>/eval_grid.json`` (by rank 0 alone: under
    ``torchrun`` each combination's episodes are split across the ranks, as in ``evaluate_run``).
    """
    world = distributed.init()
    try:
        config, model = load_on_ranks(path, overrides, world)
        ways = list(ways or [config.eval_task.ways])
        shots = list(shots or [config.eval_task.shots])
        in_memory = config.data.dataset in build.DISTRIBUTIONS
        dataset = None if in_memory else build.load_partition(config, "test", data_dir, cache_dir)
        results = []
        for w in ways:
            for s in shots:
                spec_config = apply_overrides(config, [f"eval_task.ways={w}", f"eval_task.shots={s}"])
                build.validate(spec_config)
                if dataset is None:
                    sampler = build.build_source(spec_config, "test")
                else:
                    sampler = EpisodeSampler(dataset, build.task_spec(spec_config.eval_task), seed=config.eval.seed)
                episodes = config.eval.episodes
                results.append(run_protocol(model, sampler, spec_config, episodes, progress and world.is_main, world))
    finally:
        distributed.teardown(world)
    if Path(path).is_dir() and world.is_main:
        rows = [r.as_dict() for r in results]
        (Path(path) / GRID_FILE).write_text(json.dumps({"recipe": config.name, "results": rows}, indent=2))
    return config, results


def grid_table(results: Sequence[EvalResult]) -> str:
    """Markdown table: one row per ways, one column per shots, mean ± CI."""
    ways = sorted({r.spec.ways for r in results})
    shots = sorted({r.spec.shots for r in results})
    cell = {(r.spec.ways, r.spec.shots): r for r in results}
    scale = 100.0 if results[0].metric == "accuracy" else 1.0
    lines = ["| ways \\\\ shots | " + " | ".join(f"{s}-shot" for s in shots) + " |", "| --- |" + " ---: |" * len(shots)]
    for w in ways:
        values = [f"{cell[w, s].mean * scale:.2f} ± {cell[w, s].ci95 * scale:.2f}" for s in shots]
        lines.append(f"| {w}-way | " + " | ".join(values) + " |")
    first = results[0]
    lines.append(f"\n{first.metric}, n={first.n} episodes each, {first.spec.queries} queries per class, BN: {first.bn_policy}")
    return "\n".join(lines)
