"""``fastadapt.engine.runs``: results file, result line, checkpoint paths (trained runs are
loaded and re-evaluated in ``test_trainer.py``)."""

import json

import torch

from fastadapt.engine.evaluate import EvalResult
from fastadapt.engine.runs import checkpoint_file, describe, write_results
from fastadapt.engine.trainer import resolve_config
from fastadapt.tasks.spec import TaskSpec


def result(mean: float = 0.9812) -> EvalResult:
    return EvalResult("accuracy", mean, 0.0019, 1000, TaskSpec(5, 1, 15), "running statistics", torch.zeros(1000))


def test_describe_puts_the_papers_figure_beside_the_result():
    config = resolve_config("omniglot/protonet-5w1s")
    line = describe(result(), config)
    assert line.startswith(str(result())) and f"paper: {config.reference.value}" in line
    assert config.reference.source in line
    bare = resolve_config("omniglot/protonet-5w1s", ["reference.value=null"])
    assert describe(result(), bare) == str(result())


def test_write_results_records_the_test_figure_and_the_reference(tmp_path):
    config = resolve_config("omniglot/protonet-5w1s")
    write_results(tmp_path, config, result(), iteration=500, elapsed=12.5, trained=600)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["test"]["n"] == 1000 and payload["checkpoint_iteration"] == 500
    assert payload["train_iterations"] == 600 and payload["reference"]["value"] == config.reference.value
    assert not (tmp_path / "results.json.tmp").exists()
    assert set(payload["hardware"]) == {"cpu", "cpu_capability", "bf16_native", "torch", "threads"}
    assert payload["hardware"]["torch"] == torch.__version__ and "precision" not in payload  # ProtoNet's recipe sets none


def test_write_results_records_what_precision_auto_resolved_to(tmp_path, monkeypatch):
    import fastadapt.engine.runs as runs

    config = resolve_config("omniglot/protonet-5w1s", ["algorithm.args.precision=auto"])
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(runs, "resolve_precision", lambda p, d, native=native: "bfloat16" if native else "float32")
        write_results(tmp_path, config, result(), iteration=1, elapsed=1.0, trained=1)
        assert json.loads((tmp_path / "results.json").read_text())["precision"] == expected


def test_checkpoint_file_of_a_run_directory_is_its_best_checkpoint(tmp_path):
    assert checkpoint_file(tmp_path) == tmp_path / "checkpoints" / "best.pt"
    assert checkpoint_file(tmp_path / "last.pt") == tmp_path / "last.pt"
