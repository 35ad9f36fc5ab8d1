"""Distributed meta-training: 2 processes under torchrun (gloo, loopback) against 1 process.

Each 2-process run starts three interpreters (torchrun and two ranks), so the default
suite keeps one equivalence test and the collective-helper test; the others are slow.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fastadapt.engine import distributed, evaluate_run, train
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.metrics_log import read_metrics
from fastadapt.engine.runs import describe
from fastadapt.engine.grid import evaluate_grid

SMALL = [
    "data.dataset=synthetic", "data.split=default", "data.image_size=16", "backbone.args.hidden=8",
    "backbone.args.image_size=16", "train_task.ways=5", "train.threads=1", "train.log_every=4",
    "train.checkpoint_every=4", "eval_task.ways=5",
]
# 3 tasks on 2 ranks: an uneven 2 + 1 split. The two runs sum the same gradients in another order;
# the rounding difference (~1e-7 after one step) grows with training, so runs are short, weights are
# compared at 1e-4, and the optimisers are SGD: Adam (outer, or Reptile's inner one) divides
# rounding-level gradient differences by their own size and makes them visible within a few steps.
# ProtoNet without BatchNorm, whose batch statistics would span the tasks of one call (see
# fastadapt.engine.distributed); this small net then barely learns, so train accuracy (argmax over
# near-equal logits) is compared loosely and the weights, losses and evaluation strictly.
PROTONET = [
    *SMALL, "train_task.queries=2", "train_task.batch_size=3", "train.iterations=12", "train.val_every=4",
    "train.val_episodes=10", "eval.episodes=20", "eval_task.queries=3", "eval_task.batch_size=3",
    "backbone.args.bn=none", "eval.bn_policy=none", "optim.name=sgd", "optim.lr=2.0",
]
# Gradient learners: 28 px (Conv-4 with stride-2 blocks and batch statistics needs >= 2x2 final maps).
MAML = [  # second order, per-task batch statistics
    *SMALL, "data.image_size=28", "backbone.args.image_size=28", "train_task.queries=1", "train_task.batch_size=3",
    "train.iterations=6", "train.val_every=0",
    "eval.episodes=6", "eval_task.batch_size=1", "algorithm.args.eval_inner_steps=2", "optim.name=sgd", "optim.lr=0.5",
]
REPTILE = [
    *SMALL, "data.image_size=28", "backbone.args.image_size=28", "train_task.shots=2", "train_task.batch_size=3", "train.iterations=8", "train.val_every=0",
    "eval.episodes=5", "algorithm.args.inner_steps=2", "algorithm.args.eval_inner_steps=2",
    "algorithm.args.inner_batch=5", "algorithm.args.inner_optimizer=sgd", "algorithm.args.inner_lr=0.1",
]
CASES = {
    "protonet": ("omniglot/protonet-5w1s", PROTONET),
    "maml": ("omniglot/maml-5w1s", MAML),
    "reptile": ("omniglot/reptile-5w1s", REPTILE),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, restarts: int = 0) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--max-restarts={restarts}",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args,
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "FASTADAPT_DIST_TIMEOUT_S": "60"}


# The free port chosen for the rendezvous can be taken by another process before torchrun
# binds it (or a gloo peer refuses a connection on a loaded machine): those failures, and
# only those, are retried with a fresh port.
TRANSIENT = ("Address already in use", "EADDRINUSE", "connectFullMesh", "Connection refused")


def launch(args: list[str], timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    for _ in range(3):
        proc = subprocess.run(torchrun(args, **kw), env=environment(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or not any(t in proc.stderr for t in TRANSIENT):
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_same_run(one: Path, two: Path, loose_train_accuracy: bool = False) -> None:
    """Same final weights (float tolerance), same metric rows, same test result."""
    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    rows_a, rows_b = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [(r["split"], r["iteration"]) for r in rows_a] == [(r["split"], r["iteration"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "accuracy", "ci95"):
            if key in ra:
                loose = key == "accuracy" and ra["split"] == "train" and loose_train_accuracy
                assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=0.04 if loose else 1e-4), (ra, rb)
    test_a = json.loads((one / "results.json").read_text())["test"]
    test_b = json.loads((two / "results.json").read_text())["test"]
    assert test_b["n"] == test_a["n"]
    assert test_b["mean"] == pytest.approx(test_a["mean"], abs=1e-6)
    assert test_b["ci95"] == pytest.approx(test_a["ci95"], abs=1e-6)


# Re-evaluation: 7 episodes in batches of 2, dealt out unevenly (rank 0: episodes 0, 1, 4, 5; rank 1: 2, 3, 6).
EVAL = ["eval.episodes=7", "eval_task.batch_size=2"]


def test_two_ranks_through_the_python_api_match_one_process(tmp_path):
    """Training, then re-evaluation (``evaluate_run``, ``fastadapt eval``, ``evaluate_grid``) on 2 ranks
    against 1 process."""
    recipe, overrides = CASES["maml"]
    script = tmp_path / "api.py"
    script.write_text(textwrap.dedent(f"""
        import contextlib, io, json, os, sys
        from fastadapt.cli import main
        from fastadapt.engine import evaluate_run, train
        from fastadapt.engine import build
        result = train({recipe!r}, {overrides!r}, run_dir=sys.argv[1], progress=False)
        seen, build_source = [], build.build_source

        class Recording:  # the test source, noting which episodes this rank draws
            def __init__(self, source):
                self.source = source
            def __getattr__(self, name):
                return getattr(self.source, name)
            def sample(self, indices):
                seen.extend(int(i) for i in indices)
                return self.source.sample(indices)

        build.build_source = lambda *args, **kwargs: Recording(build_source(*args, **kwargs))
        _, again = evaluate_run(sys.argv[1], {EVAL!r}, progress=False)
        build.build_source = build_source
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["eval", sys.argv[1], *{EVAL!r}, "--no-progress"])
        import pathlib
        from fastadapt.engine.grid import evaluate_grid
        writes, write_text = [], pathlib.Path.write_text
        pathlib.Path.write_text = lambda self, *a, **k: (writes.append(self.name), write_text(self, *a, **k))[1]
        _, cells = evaluate_grid(sys.argv[1], None, [1, 2], {EVAL!r})
        pathlib.Path.write_text = write_text
        # gloo threads still running after train() returns mean a leaked process group (a rank can
        # abort at exit: "terminate called without an active exception")
        threads = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        out = {{"mean": result.test.mean, "n": result.test.n, "best": result.best_iteration,
               "eval": [again.per_episode.tolist(), again.mean, again.ci95, again.n],
               "cli": [code, printed.getvalue()], "seen": seen, "gloo_threads": [t for t in threads if "gloo" in t],
               "grid": [[c.per_episode.tolist(), c.mean, c.ci95, c.n] for c in cells], "grid_writes": writes}}
        with open(os.path.join(sys.argv[2], "rank%s.json" % os.environ["RANK"]), "w") as f:
            json.dump(out, f)
    """))
    launch([str(script), str(tmp_path / "two"), str(tmp_path)])
    train(recipe, overrides, run_dir=tmp_path / "one", progress=False)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "one" / "results.json").read_text())["test"]["mean"] > 0.3  # it learns
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    cli = [rank.pop("cli") for rank in ranks]
    assert [rank.pop("grid_writes") for rank in ranks] == [["eval_grid.json"], []]  # rank 0 alone writes
    assert [rank.pop("seen") for rank in ranks] == [[0, 1, 4, 5], [2, 3, 6]]  # the episodes are split
    assert ranks[0] == ranks[1] and ranks[0]["n"] == 6  # every rank returns the full result
    assert ranks[0]["gloo_threads"] == [], ranks  # teardown really destroyed the group
    assert not (tmp_path / "two" / "metrics.jsonl.tmp").exists()
    # the same checkpoint re-evaluated in this process: the same episodes, values, mean and CI, exactly
    config, one = evaluate_run(tmp_path / "two", EVAL, progress=False)
    assert ranks[0]["eval"] == [one.per_episode.tolist(), one.mean, one.ci95, 7]
    assert cli == [[0, describe(one, config) + "\n"], [0, ""]]  # rank 0 alone prints
    _, cells = evaluate_grid(tmp_path / "two", None, [1, 2], EVAL)  # the grid's cells are split the same way
    assert ranks[0]["grid"] == [[c.per_episode.tolist(), c.mean, c.ci95, c.n] for c in cells]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["protonet", "maml", "reptile"])
def test_torchrun_cli_matches_one_process(tmp_path, name):
    recipe, overrides = CASES[name]
    proc = launch(["-m", "fastadapt", "train", recipe, *overrides, "--run-dir", str(tmp_path / "two"), "--no-progress"])
    assert proc.stdout.count("run directory:") == 1, proc.stdout  # rank 0 alone prints the result
    train(recipe, overrides, run_dir=tmp_path / "one", progress=False)
    assert_same_run(tmp_path / "one", tmp_path / "two", loose_train_accuracy=name == "protonet")


HELPERS = """
import os, sys, time, torch, torch.distributed as dist
from torch import nn
from fastadapt.engine import distributed as d
if sys.argv[1] == "late" and os.environ["RANK"] == "0":
    time.sleep(1.5)  # rank 1 looks for rank 0's address before this rank 0 has published it
world = d.init()
assert world.world_size == 2 and world.owns_group
r = world.rank
# BatchNorm running statistics: average weighted by each rank's share; a rank without tasks weighs 0
bn = nn.BatchNorm1d(3)
bn.running_mean.fill_(3.0 if r == 0 else 6.0); bn.running_var.fill_(1.0 + r); bn.num_batches_tracked.fill_(5 - r)
d.sync_running_stats(bn, 2 / 3 if r == 0 else 1 / 3, world)
torch.testing.assert_close(bn.running_mean, torch.full((3,), 4.0)); torch.testing.assert_close(bn.running_var, torch.full((3,), 4 / 3))
assert bn.num_batches_tracked.item() == 5
bn.running_mean.fill_(0.1234567 if r == 0 else 99.0)
d.sync_running_stats(bn, 1.0 if r == 0 else 0.0, world)
assert bn.running_mean.tolist() == torch.full((3,), 0.1234567).tolist()  # B = 1: rank 0's, bit for bit
# gradients: weighted sum; a parameter without a gradient anywhere keeps None; extras summed
a, b, unused = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
a.grad = torch.tensor([1.0, 2.0]) * (r + 1)
b.grad = torch.ones(1) if r == 0 else None
extras = d.reduce_gradients([a, b, unused], 0.75 if r == 0 else 0.25, [float(r + 1)], world)
torch.testing.assert_close(a.grad, torch.tensor([1.25, 2.5])); torch.testing.assert_close(b.grad, torch.tensor([0.75]))
assert unused.grad is None and extras == [3.0]
# evaluation values come back in episode order on every rank
mine = torch.arange(5)[r::2]
full = d.gather_episodes(mine.float() * 10, mine, 5, world)
assert full.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
assert d.share(3, world) == ((0, 2) if r == 0 else (2, 3)) and list(d.eval_batches(3, world)) == ([0, 2] if r == 0 else [1])
# a refusal on rank 0 is raised on every rank; a differing value is named
try:
    d.on_main(lambda: (_ for _ in ()).throw(FileExistsError("taken")), world, "setup")
except FileExistsError as error:
    assert "taken" in str(error)
else:
    raise SystemExit("on_main did not raise")
try:
    d.check_same({"lr": 0.1 * (r + 1)}, world, "config")
except RuntimeError as error:
    assert "ranks [1] have a different config" in str(error), error
else:
    raise SystemExit("check_same did not raise")
assert d.default_threads(world) >= 1
assert d.any_rank(r == 1, world) and not d.any_rank(False, world)  # e.g. only rank 1's node counted a restart
d.teardown(world)
assert not dist.is_initialized()
print("ok", r)
"""


def test_collective_helpers_and_batchnorm_policy_twice_on_one_store():
    """The helpers, run by two groups in turn on one store, as torchrun ``--max-restarts`` does.

    torchrun keeps its store (and the first group's keys) for the restarted group; the second group
    must publish its addresses under new keys, else a rank can read a dead rank's address.
    """
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {**environment(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True", "FASTADAPT_DIST_TIMEOUT_S": "20"}
    keys = []
    for group in ("first", "late"):
        ranks = [subprocess.Popen([sys.executable, "-c", HELPERS, group], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
        try:
            outputs = [rank.communicate(timeout=60) for rank in ranks]
        finally:
            for rank in ranks:
                rank.kill() if rank.poll() is None else None
        assert [rank.returncode for rank in ranks] == [0, 0], f"{group} group: {outputs}"
        assert [out for out, _ in outputs] == ["ok 0\n", "ok 1\n"], outputs
        keys.append(set(store.list_keys()))
    assert len(keys[1] - keys[0]) >= 2, keys  # the second group's addresses are under fresh keys


def test_share_and_detect_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.detect() == distributed.SINGLE and distributed.init() == distributed.SINGLE
    shares = [distributed.share(7, distributed.World(r, 3)) for r in range(3)]
    assert shares == [(0, 3), (3, 5), (5, 7)]
    assert distributed.share(1, distributed.World(1, 2)) == (1, 1)  # a rank may have no task
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(RuntimeError, match="RANK must be an integer, got 'two'"):
        distributed.detect()
    monkeypatch.setenv("FASTADAPT_DIST_TIMEOUT_S", "-1")
    with pytest.raises(ValueError, match="FASTADAPT_DIST_TIMEOUT_S must be > 0"):
        distributed.timeout_s()


def _worker_pids(launcher: int) -> dict[int, int]:
    """``rank -> pid`` of the workers torchrun started."""
    children = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    ranks = {}
    for pid in children:
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


FAULT = [o for o in PROTONET if not o.startswith("train.iterations")] + ["train.iterations=40"]


def _start_and_kill_rank1(run_dir: Path, restarts: int, sig: int = signal.SIGKILL, options: list[str] = FAULT,
                          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a 2-rank training run and send ``sig`` to rank 1 once iteration 13 is logged."""
    cmd = torchrun(["-m", "fastadapt", "train", "omniglot/protonet-5w1s", *options, "--run-dir", str(run_dir), "--no-progress"],
                   restarts=restarts)
    proc = subprocess.Popen(cmd, env={**environment(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and any(r["iteration"] >= 13 for r in read_metrics(metrics)):
            break
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read()}")
        time.sleep(0.02)
    os.kill(_worker_pids(proc.pid)[1], sig)
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The 2-process run the killed and restarted ones must reproduce exactly."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    launch(["-m", "fastadapt", "train", "omniglot/protonet-5w1s", *FAULT, "--run-dir", str(run), "--no-progress"])
    return run


def assert_identical_run(one: Path, two: Path) -> None:
    """Bit-identical weights, metric rows (timings aside) and test result."""
    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("episodes_per_s", "elapsed_s")} for r in rows]
    assert strip(read_metrics(one / "metrics.jsonl")) == strip(read_metrics(two / "metrics.jsonl"))
    assert json.loads((one / "results.json").read_text())["test"] == json.loads((two / "results.json").read_text())["test"]


@pytest.mark.slow
def test_killed_rank_stops_the_run_and_resume_matches(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    proc = _start_and_kill_rank1(killed, restarts=0)
    started = time.time()
    _, stderr = proc.communicate(timeout=60)  # bounded: no hang
    assert proc.returncode != 0 and time.time() - started < 30
    assert "Signal 9 (SIGKILL)" in stderr and "rank      : 1" in stderr, stderr[-3000:]
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["iteration"] < 40
    launch(["-m", "fastadapt", "train", "--resume", str(killed), "--no-progress"])
    assert_identical_run(uninterrupted, killed)


@pytest.mark.slow
def test_torchrun_restart_continues_from_last_checkpoint(tmp_path, uninterrupted):
    run = tmp_path / "restarted"
    proc = _start_and_kill_rank1(run, restarts=1)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert_identical_run(uninterrupted, run)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_hung_rank_stops_the_run_at_the_collective_timeout(tmp_path):
    """A rank alive but stuck (SIGSTOP) is caught by the other rank's collective timeout."""
    options = [o for o in FAULT if not o.startswith("train.iterations")] + ["train.iterations=100000"]
    proc = _start_and_kill_rank1(tmp_path / "hung", 0, signal.SIGSTOP, options, {"FASTADAPT_DIST_TIMEOUT_S": "20"})
    stopped, pids = time.time(), _worker_pids(proc.pid)
    try:
        while _running(pids[0]) and time.time() - stopped < 60:
            time.sleep(0.1)
        waited = time.time() - stopped
        # A hung rank still dies on torchrun's SIGTERM; a stopped one only on the SIGKILL 30 s later.
        os.kill(pids[1], signal.SIGCONT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        for pid in pids.values():
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    assert proc.returncode != 0 and 18 < waited < 40, (proc.returncode, waited)  # the timeout, not sooner
    message = "another rank has probably died or hung (timeout 20 s, set FASTADAPT_DIST_TIMEOUT_S)"
    assert "fastadapt: error: rank 0 of 2:" in stderr and message in stderr, stderr[-3000:]


def test_peer_loss_without_torchrun_gives_a_clear_error(tmp_path):
    """A rank whose peer dies (e.g. on another node) stops at its next collective with a message."""
    port = free_port()
    base = {**environment(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2"}
    code = ("import torch, torch.distributed as dist, time; from fastadapt.engine import distributed as d; "
            "w = d.init(); dist.barrier(); time.sleep(1) if w.rank == 0 else None; "
            "d.gather_episodes(torch.zeros(1), torch.zeros(1, dtype=torch.long), 2, w) if w.rank == 0 else None")
    rank0 = subprocess.Popen([sys.executable, "-c", code], env={**base, "RANK": "0", "LOCAL_RANK": "0"},
                             stderr=subprocess.PIPE, text=True)
    rank1 = subprocess.Popen([sys.executable, "-c", code], env={**base, "RANK": "1", "LOCAL_RANK": "1"})
    rank1.wait(timeout=60)  # rank 1 leaves after the barrier, as if it had died
    _, stderr = rank0.communicate(timeout=60)
    assert rank0.returncode != 0
    assert "PeerLostError: rank 0 of 2: evaluation all-gather failed" in stderr and "another rank has probably died" in stderr, stderr
