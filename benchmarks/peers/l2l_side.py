"""learn2learn 0.2.0 (PyPI sdist), its torch-only modules loaded without the package ``__init__``.

``import learn2learn`` runs ``learn2learn/__init__.py``, which imports its vision, gym and
text sub-packages and through them torchvision (here only a CUDA build exists, which does
not load beside CPU torch). The benchmark therefore registers ``learn2learn``,
``learn2learn.algorithms`` and ``learn2learn.nn`` in ``sys.modules`` as empty packages
pointing at the installed directories, then imports the unmodified modules
``learn2learn.algorithms.maml`` (which pulls ``learn2learn.utils``: ``clone_module``,
``update_module``) and ``learn2learn.nn.protonet``.

MAML: ``l2l.algorithms.MAML(model, lr, first_order)``; per task ``learner = maml.clone()``,
``learner.adapt(support_loss)`` per inner step, query loss back-propagated per task (as in
learn2learn's ``maml_omniglot.py`` example). ProtoNet: ``learn2learn.nn.PrototypicalClassifier``
(``fit_`` on support embeddings, called on query embeddings). learn2learn has no Reptile.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.bench import Backward, BenchConfig
from fastadapt.tasks import EpisodeBatch

NOTE = ("learn2learn 0.2.0 sdist (C files regenerated with Cython 0.29.37); torch-only modules loaded "
        "without running learn2learn/__init__.py (it needs torchvision)")


def _root() -> Path:
    spec = importlib.util.find_spec("learn2learn")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("learn2learn is not installed in this environment (benchmarks/peers/setup_env.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def _load(module: str, root: Path) -> types.ModuleType:
    for name in ("learn2learn", "learn2learn.algorithms", "learn2learn.nn"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    return importlib.import_module(module)


_ROOT = _root()
l2l_maml = _load("learn2learn.algorithms.maml", _ROOT)
l2l_protonet = _load("learn2learn.nn.protonet", _ROOT)


def version() -> str:
    return importlib.metadata.version("learn2learn")


def maml(config: BenchConfig, model: nn.Module) -> Backward:
    args = config.algorithm_args
    wrapper = l2l_maml.MAML(model, lr=args["inner_lr"], first_order=args.get("first_order", False))

    def backward(batch: EpisodeBatch) -> None:
        for t in range(len(batch)):
            learner = wrapper.clone()
            for _ in range(args["inner_steps"]):
                learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]))
            (F.cross_entropy(learner(batch.query_x[t]), batch.query_y[t]) / len(batch)).backward()

    return backward


def protonet(config: BenchConfig, model: nn.Module) -> Backward:
    def backward(batch: EpisodeBatch) -> None:
        loss = torch.zeros(())
        for t in range(len(batch)):
            n_support = batch.support_x.shape[1]
            z = model(torch.cat([batch.support_x[t], batch.query_x[t]])).flatten(1)
            classifier = l2l_protonet.PrototypicalClassifier(z[:n_support], batch.support_y[t])
            loss = loss + F.cross_entropy(classifier(z[n_support:]), batch.query_y[t]) / len(batch)
        loss.backward()

    return backward


BACKWARD = {"maml": maml, "protonet": protonet}
