import json

import pytest

import fastadapt
from fastadapt.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastadapt {fastadapt.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "data" in capsys.readouterr().out


def test_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["data", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err


def test_recipes_list_and_show(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "omniglot/protonet-5w1s" in out and "98.8 %" in out
    assert main(["recipes", "show", "omniglot/protonet-20w5s"]) == 0
    shown = capsys.readouterr().out
    assert "ways: 20" in shown and "Snell et al. 2017" in shown
    assert main(["recipes", "show", "omniglot/protonet-5w1"]) == 1
    assert "did you mean 'omniglot/protonet-5w1s'" in capsys.readouterr().err


TINY = [
    "data.dataset=synthetic", "data.split=default", "data.image_size=16", "backbone.args.hidden=8",
    "backbone.args.image_size=16", "train_task.ways=5", "train_task.queries=2", "train.iterations=6",
    "train.val_every=3", "train.val_episodes=5", "train.log_every=2", "train.checkpoint_every=2",
    "eval.episodes=10", "optim.lr=0.01",
]


def test_train_eval_resume_plot_in_process(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "omniglot/protonet-5w1s", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy = " in out and "(n=10 episodes, 5-way 1-shot 15-query, BN: running statistics" in out
    assert "paper: 98.8 %" in out and str(run) in out
    assert main(["eval", str(run), "eval_task.ways=3", "eval.episodes=4", "--no-progress"]) == 0
    assert "(n=4 episodes, 3-way 1-shot 15-query" in capsys.readouterr().out
    assert main(["eval", str(run / "checkpoints" / "best.pt"), "eval.episodes=4", "--no-progress"]) == 0
    capsys.readouterr()
    # resuming a finished run trains nothing more and reports the same figure
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "accuracy = " in capsys.readouterr().out
    # one call, several task specs: a table, eval_grid.json, and the grid plot
    assert main(["eval", str(run), "eval.episodes=4", "eval_task.queries=5", "--ways", "3", "5", "--shots", "1", "2", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| 3-way |" in table and "| 5-way |" in table and "2-shot" in table and "n=4 episodes" in table
    assert len(json.loads((run / "eval_grid.json").read_text())["results"]) == 4
    assert main(["plot", str(run)]) == 0
    png = run / "plots" / "learning_curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (run / "plots" / "accuracy_vs_shots_and_ways.png").stat().st_size > 10_000
    # errors are reported with a message and status 1, not a traceback
    assert main(["train", "omniglot/protonet-5w1s", "train.iteration=3", "--run-dir", str(tmp_path / "x")]) == 1
    assert "did you mean 'iterations'" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 1
    assert "not a run directory" in capsys.readouterr().err
