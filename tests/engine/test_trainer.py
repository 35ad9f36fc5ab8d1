import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastadapt.algorithms import register_algorithm
from fastadapt.algorithms.base import ALGORITHMS, MetaOutput
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.engine import NonFiniteLossError, evaluate_run, train
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.metrics_log import read_metrics

TINY = [
    "data.dataset=synthetic", "data.split=default", "data.image_size=16", "backbone.args.hidden=8",
    "backbone.args.image_size=16", "train_task.ways=5", "train_task.queries=2", "train_task.batch_size=2",
    "train.iterations=24", "train.val_every=8", "train.val_episodes=10", "train.log_every=4",
    "train.checkpoint_every=4", "eval.episodes=20", "eval_task.queries=3", "train.threads=1", "optim.lr=0.01",
]


def test_train_writes_a_complete_run(tmp_path):
    result = train("omniglot/protonet-5w1s", TINY, run_dir=tmp_path / "run", progress=False)
    run = result.run_dir
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "results.json"}
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows if r["split"] == "train"] == [4, 8, 12, 16, 20, 24]
    assert [r["iteration"] for r in rows if r["split"] == "val"] == [8, 16, 24]
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["n"] == 20 and results["reference"]["value"] == 98.8
    assert result.test.mean > 0.4  # twice chance (0.2) after 24 iterations
    best = max((r for r in rows if r["split"] == "val"), key=lambda r: r["accuracy"])
    assert result.best_iteration == best["iteration"]
    # re-evaluation with another task spec from the run directory
    config, other = evaluate_run(run, ["eval_task.ways=10", "eval.episodes=5"], progress=False)
    assert other.spec.ways == 10 and other.n == 5
    with pytest.raises(FileExistsError, match="already holds a run"):
        train("omniglot/protonet-5w1s", TINY, run_dir=run, progress=False)


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    reference = train("omniglot/protonet-5w1s", TINY, run_dir=tmp_path / "straight", progress=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fastadapt", "train", "omniglot/protonet-5w1s", *TINY, "--run-dir", str(killed), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    metrics = killed / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and any(r["iteration"] >= 13 for r in read_metrics(metrics)):
            break
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["iteration"] < 24
    resumed = train(run_dir=killed, resume=True, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("episodes_per_s", "elapsed_s")} for r in rows]
    assert strip(read_metrics(metrics)) == strip(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    assert resumed.test.mean == reference.test.mean and resumed.best_iteration == reference.best_iteration


class NaNAfterThree(ProtoNet):
    calls = 0

    def meta_loss(self, batch):
        out = super().meta_loss(batch)
        NaNAfterThree.calls += 1
        return MetaOutput(out.loss * float("nan"), out.logits) if NaNAfterThree.calls > 5 else out


if "test_nan_after_five" not in ALGORITHMS:
    register_algorithm("test_nan_after_five")(NaNAfterThree)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    NaNAfterThree.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at iteration 6; stopped, the last good checkpoint is .*last.pt"):
        train("omniglot/protonet-5w1s", [*TINY, "algorithm.name=test_nan_after_five"], run_dir=tmp_path / "r", progress=False)
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_regression_recipe_runs_and_selects_lowest_mse(tmp_path):
    result = train(
        "sinusoid/maml",
        ["train.iterations=40", "train.val_every=10", "train.val_episodes=20", "train.log_every=10",
         "train.checkpoint_every=10", "eval.episodes=30", "train_task.batch_size=4"],
        run_dir=tmp_path / "sin", progress=False,
    )
    rows = read_metrics(tmp_path / "sin" / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert all("mse" in r for r in rows) and len(val) == 4
    assert result.best_iteration == min(val, key=lambda r: r["mse"])["iteration"]
    assert result.test.metric == "mse" and result.test.n == 30 and result.test.spec.shots == 5
    # evaluation-time algorithm arguments apply to the rebuilt model
    _, one_step = evaluate_run(tmp_path / "sin", ["algorithm.args.eval_inner_steps=0", "eval.episodes=30"], progress=False)
    assert one_step.mean != result.test.mean


def test_tensorboard_logging_or_a_clear_install_hint(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RuntimeError, match=r"pip install fastadapt\[tensorboard\]"):
            train("omniglot/protonet-5w1s", TINY, run_dir=tmp_path / "tb", progress=False, tensorboard=True)
        assert not (tmp_path / "tb").exists()  # refused before anything is written
    else:
        train("omniglot/protonet-5w1s", TINY, run_dir=tmp_path / "tb", progress=False, tensorboard=True)
        assert any((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_siamese_trains_on_pairs_and_is_tested_on_episodes(tmp_path):
    from fastadapt.engine.build import build_source
    from fastadapt.engine.trainer import resolve_config
    from fastadapt.tasks import EpisodeSampler, PairSampler

    overrides = [o for o in TINY if not o.startswith(("train_task.", "backbone.args.hidden"))]
    overrides += ["backbone.args.hidden=8", "algorithm.args.embedding_dim=8", "train_task.batch_size=16"]
    config = resolve_config("omniglot/siamese-5w1s", overrides)
    assert isinstance(build_source(config, "train"), PairSampler)
    assert isinstance(build_source(config, "test"), EpisodeSampler)
    result = train(config, run_dir=tmp_path / "siamese", progress=False)
    rows = read_metrics(tmp_path / "siamese" / "metrics.jsonl")
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows) and result.test.spec.ways == 5


def test_time_budget_stops_early_and_records_the_iterations_run(tmp_path):
    # A budget far below one iteration's time stops after the first iteration, which is
    # then logged, validated, checkpointed and tested like a normal last iteration.
    overrides = [*TINY, "train.iterations=1000", "train.max_minutes=0.000001"]
    result = train("omniglot/protonet-5w1s", overrides, run_dir=tmp_path / "run", progress=False)
    assert result.iterations == 1 and result.config.train.iterations == 1000
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [(r["split"], r["iteration"]) for r in rows] == [("train", 1), ("val", 1)]
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["iteration"] == 1
    results = json.loads((result.run_dir / "results.json").read_text())
    assert results["train_iterations"] == 1 and results["configured_iterations"] == 1000
