"""fastadapt: meta-learning (few-shot learning and fast adaptation) on PyTorch.

Importing the package pulls in torch and numpy only; plotting, TensorBoard and
RL dependencies are imported where they are used.
"""

from fastadapt.tasks import Episode, EpisodeBatch, EpisodeSampler, TaskSpec

__version__ = "0.1.0"

__all__ = ["Episode", "EpisodeBatch", "EpisodeSampler", "TaskSpec", "__version__"]
