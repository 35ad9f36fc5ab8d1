"""Engine: evaluation protocol (and, from the engine issue on, training, checkpoints, logging)."""

from fastadapt.engine.evaluate import EvalResult, Predictor, evaluate

__all__ = ["EvalResult", "Predictor", "evaluate"]
