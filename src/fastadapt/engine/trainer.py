"""Meta-training: the loop, validation, checkpoints, resume and the final test.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl``,
``checkpoints/last.pt`` (everything needed to continue), ``checkpoints/best.pt``
(weights with the best validation accuracy), ``results.json`` and ``plots/``
(written when matplotlib is installed; ``fastadapt plot`` redraws them).
Meta-batch ``k`` is episodes ``[k*B, (k+1)*B)`` of the training sampler, so a
resumed run draws exactly the episodes the uninterrupted run would have drawn;
together with the restored model, optimiser, scheduler and RNG states it reaches
the same final weights and metrics.

Under ``torchrun`` (``fastadapt.engine.distributed``) each rank trains on its share
of every meta-batch and the meta-gradients are all-reduced; only rank 0 writes the
run directory or shows progress, and evaluation episodes are split across ranks.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import fastadapt
from fastadapt.config import Config, apply_overrides
from fastadapt.engine import build, distributed
from fastadapt.engine.checkpoint import load_checkpoint, save_atomic
from fastadapt.engine.evaluate import METRICS, EvalResult
from fastadapt.engine.metrics_log import MetricsLog
from fastadapt.engine.runs import run_protocol, set_threads, write_results
from fastadapt.recipes import get_recipe
from fastadapt.runtime import tune_allocator
from fastadapt.tasks.sampler import batch_at
from fastadapt.tensor_pool import use_tensor_pool


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class RunResult:
    """What ``train`` returns.

    Attributes:
        run_dir: the run directory.
        config: the resolved config that ran.
        test: test-split evaluation of the best checkpoint (``None`` if skipped).
        best_iteration: iteration of the checkpoint evaluated.
        best_val: its validation accuracy (``None`` without validation).
        wall_s: seconds spent in this call.
        iterations: meta-iterations trained (fewer than ``config.train.iterations``
            when ``train.max_minutes`` stopped the run).
    """

    run_dir: Path
    config: Config
    test: EvalResult | None
    best_iteration: int
    best_val: float | None
    wall_s: float
    iterations: int


def resolve_config(recipe: str | Config, overrides: list[str] | None = None) -> Config:
    """A recipe name or config, with overrides applied and validated."""
    config = get_recipe(recipe) if isinstance(recipe, str) else recipe
    config = apply_overrides(config, list(overrides or []))
    build.validate(config)
    return config


def default_run_dir(config: Config) -> Path:
    """``runs/<recipe>/<timestamp>``, with a numeric suffix if that exists already."""
    base = Path("runs") / (config.name.replace("/", "_") or "run") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def train(
    recipe: str | Config | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    evaluate_test: bool = True,
    download: bool = False,
) -> RunResult:
    """Meta-train a recipe, validate, keep the best checkpoint, evaluate on the test split.

    Args:
        recipe: recipe name (``"omniglot/protonet-5w1s"``) or a ``Config``; ignored
            when resuming (the run's own ``config.yaml`` is used).
        overrides: ``key.sub=value`` strings (not allowed when resuming).
        run_dir: where the run is written; default ``runs/<recipe>/<timestamp>``.
        resume: continue the run in ``run_dir`` from ``checkpoints/last.pt``.
        data_dir, cache_dir: dataset locations (see ``fastadapt.data.settings``).
        progress: show a progress bar.
        tensorboard: also write TensorBoard event files (needs the extra).
        evaluate_test: run the test protocol at the end.
        download: fetch the dataset if no local copy is found.
    """
    started = time.perf_counter()
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise RuntimeError("TensorBoard logging needs `pip install fastadapt[tensorboard]`")
    world = distributed.init()
    try:
        config, run_dir, resume = _prepare(recipe, overrides, run_dir, resume, world)
        loop = _Loop(config, run_dir, data_dir, cache_dir, tensorboard, download, world)
        try:
            loop.run(resume=resume, progress=progress)
        finally:
            loop.log.close()
        test = loop.test(progress=progress) if evaluate_test else None
    finally:
        distributed.teardown(world)
    # Plots after the group is gone: a rank must not exit while rank 0 still works inside the
    # group (gloo was seen to abort the exiting rank in C++).
    if world.is_main and importlib.util.find_spec("matplotlib") is not None:
        from fastadapt.engine.plot import plot_run

        plot_run(run_dir)
    return RunResult(
        run_dir, config, test, loop.best_iteration, loop.best_val, time.perf_counter() - started, loop.iteration
    )


def _prepare(
    recipe: str | Config | None, overrides: list[str] | None, run_dir: str | Path | None, resume: bool,
    world: distributed.World,
) -> tuple[Config, Path, bool]:
    """Resolve the config and create (or find) the run directory, on rank 0 only.

    Every rank resolves its own arguments too and must reach rank 0's config. A worker
    group restarted by ``torchrun --max-restarts`` continues the run it finds in ``run_dir``.
    """
    # Any rank's count: an agent does not count restarts for membership changes, so on several
    # nodes rank 0's own count can still be 0 when the group was restarted.
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    restarted = distributed.any_rank(world.active and count > 0, world)
    config, path, resume = distributed.on_main(
        lambda: _open_run(recipe, overrides, run_dir, resume, restarted), world, "run setup"
    )
    if world.active and not resume:
        distributed.check_same(resolve_config(recipe, overrides).to_dict(), world, "config")
    return config, path, resume


def _open_run(
    recipe: str | Config | None, overrides: list[str] | None, run_dir: str | Path | None, resume: bool,
    restarted: bool,
) -> tuple[Config, Path, bool]:
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory to continue")
        if overrides:
            raise ValueError(f"a resumed run keeps its own config; drop the overrides {overrides}")
        return _saved_config(Path(run_dir)), Path(run_dir), True
    if recipe is None:
        raise ValueError("train needs a recipe name or a Config")
    config = resolve_config(recipe, overrides)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if (run_dir / "checkpoints" / "last.pt").exists():
        if not restarted:
            raise FileExistsError(f"{run_dir} already holds a run; pass resume=True (--resume) to continue it")
        if _saved_config(run_dir) != config:
            raise ValueError(f"torchrun restarted the workers, but {run_dir / 'config.yaml'} differs from this "
                             "command's config; refusing to continue another run")
        return config, run_dir, True
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    return config, run_dir, False


def _saved_config(run_dir: Path) -> Config:
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    config = Config.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    build.validate(config)
    return config


class _NoLog:
    """Stands in for ``MetricsLog`` on ranks other than 0."""

    def truncate_after(self, iteration: int) -> None: ...

    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class _Loop:
    """State of one training run (kept out of the public API)."""

    def __init__(
        self, config: Config, run_dir: Path, data_dir: Any, cache_dir: Any, tensorboard: bool,
        download: bool, world: distributed.World = distributed.SINGLE,
    ) -> None:
        set_threads(config.train.threads, world)
        if config.train.tune_allocator:
            tune_allocator()
        if config.train.tensor_pool:
            use_tensor_pool()
        self.config, self.run_dir = config, run_dir
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.world = world
        self.model = build.build_model(config)
        distributed.check_same(
            (torch.__version__, fastadapt.__version__, distributed.fingerprint(self.model)), world,
            "torch version, fastadapt version or initial weights",
        )
        self.optimizer, self.scheduler = build.build_optimizer(config, self.model)
        self.train_sampler = build.build_source(config, "train", data_dir, cache_dir, download)
        self.val_sampler = None
        if config.train.val_every > 0:
            self.val_sampler = build.build_source(config, "val", data_dir, cache_dir)
        self.log: MetricsLog | _NoLog = _NoLog()
        if world.is_main:
            self.log = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tensorboard" if tensorboard else None)
        self.iteration, self.best_iteration, self.best_val = 0, 0, None
        self.metric = config.eval.metric
        self.elapsed = 0.0

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "best_iteration": self.best_iteration,
            "best_val": self.best_val,
            "elapsed": self.elapsed,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.iteration, self.elapsed = state["iteration"], state["elapsed"]
        self.best_iteration, self.best_val = state["best_iteration"], state["best_val"]
        self.log.truncate_after(self.iteration)

    def _load_on_main(self, name: str, missing_ok: bool = False) -> dict[str, Any] | None:
        """Checkpoint ``name`` read by rank 0 and sent to every rank (no shared file system needed)."""
        path = self.checkpoints / name
        return distributed.on_main(
            lambda: None if missing_ok and not path.exists() else load_checkpoint(path), self.world, f"loading {path}"
        )

    def run(self, resume: bool, progress: bool) -> None:
        state = self._load_on_main("last.pt", missing_ok=True) if resume else None
        if state is not None:
            self._restore(state)
        else:
            self.log.truncate_after(0)
        total = self.config.train.iterations
        bar = None
        if progress and self.world.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.iteration, desc=self.config.name or "train", unit="it")
        self.model.train()
        budget = 60.0 * self.config.train.max_minutes
        window_start, window_steps, loss_sum, metric_sum = time.perf_counter(), 0, 0.0, 0.0
        while self.iteration < total:
            loss, value = self._step()
            self.iteration += 1
            window_steps, loss_sum, metric_sum = window_steps + 1, loss_sum + loss, metric_sum + value
            if budget > 0 and distributed.decide(self.elapsed + time.perf_counter() - window_start >= budget, self.world):
                total = self.iteration  # out of time: finish this iteration as the last one
            if self.iteration % self.config.train.log_every == 0 or self.iteration == total:
                now = time.perf_counter()
                rate = window_steps * self.config.train_task.batch_size / max(now - window_start, 1e-9)
                self.elapsed += now - window_start
                # Train loss and metric are means over the iterations since the last row.
                loss, acc = loss_sum / window_steps, metric_sum / window_steps
                window_start, window_steps, loss_sum, metric_sum = now, 0, 0.0, 0.0
                row = {"iteration": self.iteration, "split": "train", "loss": loss, self.metric: acc,
                       "lr": self.optimizer.param_groups[0]["lr"], "episodes_per_s": rate, "elapsed_s": self.elapsed}
                self.log.log(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", **{self.metric: f"{acc:.3f}"}, eps=f"{rate:.1f}/s")
            last = self.iteration == total and total < self.config.train.iterations
            if self.val_sampler is not None and (self.iteration % self.config.train.val_every == 0 or last):
                self._validate(bar)
            if self.iteration % self.config.train.checkpoint_every == 0 or self.iteration == total:
                distributed.check_same(distributed.fingerprint(self.model), self.world, "model state (ranks diverged)")
                if self.world.is_main:
                    save_atomic(self._state(), self.checkpoints / "last.pt")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        has_best = distributed.on_main(lambda: (self.checkpoints / "best.pt").exists(), self.world, "checking best.pt")
        if self.val_sampler is None or not has_best:
            self._save_best(None)

    def _step(self) -> tuple[float, float]:
        if self.world.active:
            return self._distributed_step()
        batch = batch_at(self.train_sampler, self.iteration, self.config.train_task.batch_size)
        output = self.model.meta_loss(batch)
        loss = output.loss
        if not torch.isfinite(loss):
            self._nonfinite(loss.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            value = METRICS[self.metric][0](output.logits.detach(), batch.query_y).mean().item()
        return loss.item(), value

    def _distributed_step(self) -> tuple[float, float]:
        """This rank's share of meta-batch ``iteration``; weighted all-reduce of the meta-gradients."""
        size = self.config.train_task.batch_size
        start, stop = distributed.share(size, self.world)
        weight = (stop - start) / size
        self.optimizer.zero_grad(set_to_none=True)
        loss = value = 0.0
        if stop > start:
            first = self.iteration * size
            batch = self.train_sampler.sample(np.arange(first + start, first + stop))
            output = self.model.meta_loss(batch)
            output.loss.backward()
            with torch.no_grad():
                value = METRICS[self.metric][0](output.logits.detach(), batch.query_y).mean().item()
            loss = output.loss.item()
        params = [p for p in self.model.parameters() if p.requires_grad]
        loss, value = distributed.reduce_gradients(params, weight, [weight * loss, weight * value], self.world)
        if not math.isfinite(loss):
            self._nonfinite(loss)
        self.optimizer.step()
        self.scheduler.step()
        distributed.sync_running_stats(self.model, weight, self.world)
        return loss, value

    def _nonfinite(self, loss: float) -> None:
        last = self.checkpoints / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"training loss is {loss} at iteration {self.iteration + 1}; stopped, {kept}. "
            "Lower optim.lr or check the data"
        )

    def _validate(self, bar: Any) -> None:
        result = self.evaluate(self.val_sampler, self.config.train.val_episodes)
        self.model.train()
        row = {"iteration": self.iteration, "split": "val", self.metric: result.mean, "ci95": result.ci95, "n": result.n}
        self.log.log(row)
        sign = 1.0 if self.metric == "accuracy" else -1.0  # accuracy: higher is better; mse: lower
        improved = self.best_val is None or sign * result.mean > sign * self.best_val
        if improved:
            self._save_best(result.mean)
        if bar is not None:
            bar.write(f"[{self.iteration}] validation {result}{'  (best)' if improved else ''}")

    def _save_best(self, val: float | None) -> None:
        self.best_iteration, self.best_val = self.iteration, val
        if self.world.is_main:
            payload = {"config": self.config.to_dict(), "iteration": self.iteration, "model": self.model.state_dict(), "val": val}
            save_atomic(payload, self.checkpoints / "best.pt")

    def evaluate(self, sampler: Any, episodes: int, progress: bool = False) -> EvalResult:
        return run_protocol(self.model, sampler, self.config, episodes, progress and self.world.is_main, self.world)

    def test(self, progress: bool) -> EvalResult:
        best = self._load_on_main("best.pt")
        assert best is not None  # missing_ok=False: load_checkpoint raised otherwise
        self.model.load_state_dict(best["model"])
        test_sampler = build.build_source(self.config, "test", self.data_dir, self.cache_dir)
        result = self.evaluate(test_sampler, self.config.eval.episodes, progress=progress)
        if self.world.is_main:
            write_results(self.run_dir, self.config, result, best["iteration"], self.elapsed, self.iteration)
        return result
