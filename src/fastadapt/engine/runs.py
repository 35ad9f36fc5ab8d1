"""Trained runs: ``results.json``, loading a checkpoint into a learner, and the test protocol.

``train`` (``fastadapt.engine.trainer``) writes a run directory; the functions here read it back
(``load_learner``, ``load_for_eval``), re-evaluate it (``evaluate_run``, also under ``torchrun``)
and run the evaluation protocol both share (``run_protocol``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastadapt.config import Config, apply_overrides
from fastadapt.engine import build, distributed
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.evaluate import EvalResult, evaluate
from fastadapt.runtime import hardware, resolve_precision


def write_results(
    run_dir: Path, config: Config, result: EvalResult, iteration: int, elapsed: float, trained: int
) -> None:
    """``results.json``: the test figure beside the paper's, and the hardware it was measured on
    (``fastadapt.runtime.hardware``; with ``precision`` among the algorithm's arguments, also what it
    resolved to here: ``"auto"`` is bfloat16 only on a CPU with native bfloat16)."""
    payload = {
        "recipe": config.name, "test": result.as_dict(), "checkpoint_iteration": iteration,
        "train_iterations": trained, "configured_iterations": config.train.iterations, "train_seconds": elapsed,
        "reference": {"value": config.reference.value, "ci95": config.reference.ci95, "source": config.reference.source},
        "hardware": hardware(),
    }
    if "precision" in config.algorithm.args:
        payload["precision"] = resolve_precision(config.algorithm.args["precision"], "cpu")
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(run_dir / "results.json")


def describe(result: EvalResult, config: Config) -> str:
    """The result line with the paper's figure beside it."""
    ref = config.reference
    if ref.value is None:
        return str(result)
    ci = f" ± {ref.ci95}" if ref.ci95 is not None else ""
    unit = " %" if result.metric == "accuracy" else ""
    return f"{result}   paper: {ref.value}{ci}{unit} ({ref.source})"


def load_for_eval(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, nn.Module, Path]:
    """Config and model with trained weights from a run directory or a checkpoint file.

    Overrides apply before the model is built, so evaluation-time algorithm arguments
    (e.g. ``algorithm.args.eval_inner_steps=10``) take effect.
    """
    checkpoint = checkpoint_file(path)
    config, model = from_checkpoint(load_checkpoint(checkpoint), overrides)
    return config, model, checkpoint


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a run directory's evaluation uses (``checkpoints/best.pt``), or ``path`` itself."""
    path = Path(path)
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def from_checkpoint(state: dict[str, Any], overrides: list[str] | None) -> tuple[Config, nn.Module]:
    """Config (with ``overrides``, validated) and model with the weights of a loaded checkpoint."""
    config = apply_overrides(Config.from_dict(state["config"]), list(overrides or []))
    build.validate(config)
    model = build.build_model(config)
    model.load_state_dict(state["model"])
    return config, model


def load_learner(path: str | Path) -> tuple[Config, nn.Module]:
    """A trained learner (in eval mode) and its config, from a run directory or checkpoint file.

    Example:
        >>> config, learner = load_learner("runs/omniglot_protonet-5w1s/20261122-184026")  # doctest: +SKIP
        >>> logits = learner.predict(support_x, support_y, query_x)  # doctest: +SKIP
    """
    config, model, _ = load_for_eval(path)
    return config, model.eval()


def evaluate_run(
    path: str | Path,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Config, EvalResult]:
    """Re-evaluate a trained run on the test split, e.g. with other ways/shots (``eval_task.shots=5``).

    Under ``torchrun`` the episodes are split across the ranks as in training's evaluation (rank 0
    reads the checkpoint and sends it to the others); every rank returns the result over all episodes.
    """
    world = distributed.init()
    try:
        config, model = load_on_ranks(path, overrides, world)
        sampler = build.build_source(config, "test", data_dir, cache_dir)
        return config, run_protocol(model, sampler, config, config.eval.episodes, progress and world.is_main, world)
    finally:
        distributed.teardown(world)


def load_on_ranks(path: str | Path, overrides: list[str] | None, world: distributed.World) -> tuple[Config, nn.Module]:
    """``load_for_eval`` on every rank of ``world``: rank 0 reads the checkpoint and sends it to
    the others; under ``torchrun`` the ranks sharing a node share its cores (``train.threads``,
    else ``distributed.default_threads``)."""
    state = distributed.on_main(lambda: load_checkpoint(checkpoint_file(path)), world, "loading the checkpoint")
    config, model = from_checkpoint(state, overrides)
    if world.active:
        set_threads(config.train.threads, world)
    return config, model


def set_threads(threads: int, world: distributed.World) -> None:
    """``threads`` intra-op threads if > 0; else, under torchrun, the node's CPUs shared among its
    ranks (torch's default would oversubscribe them); else torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif world.active:
        torch.set_num_threads(distributed.default_threads(world))


def run_protocol(
    model: nn.Module, sampler: Any, config: Config, episodes: int, progress: bool,
    world: distributed.World = distributed.SINGLE,
) -> EvalResult:
    """Evaluate ``model`` (in eval mode) on episodes ``0..episodes-1`` of ``sampler``, split over ``world``."""
    model.eval()
    return evaluate(
        model.predict, sampler, episodes, batch_size=config.eval_task.batch_size,
        metric=config.eval.metric, bn_policy=build.BN_DESCRIPTIONS[config.eval.bn_policy], progress=progress,
        world=world,
    )

