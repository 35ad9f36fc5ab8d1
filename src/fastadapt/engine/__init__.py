"""Engine: training loop, evaluation protocol, checkpoints, logging, plots."""

from fastadapt.engine.evaluate import EvalResult, Predictor, evaluate
from fastadapt.engine.runs import evaluate_run, load_learner
from fastadapt.engine.trainer import NonFiniteLossError, RunResult, train

__all__ = ["EvalResult", "NonFiniteLossError", "Predictor", "RunResult", "evaluate", "evaluate_run", "load_learner", "train"]
