"""fastadapt through its public API: ``create_algorithm(name, backbone, **args)`` and ``meta_loss``.

``fastadapt.bench.fastadapt_backward`` is exactly that (the learner's
``meta_loss(batch).loss.backward()``); ``fastadapt bench`` times the same function.
"""

from __future__ import annotations

import importlib.metadata

from fastadapt.bench import fastadapt_backward

NOTE = "fastadapt.algorithms via create_algorithm; meta_loss(batch).loss.backward()"
BACKWARD = {"maml": fastadapt_backward, "protonet": fastadapt_backward, "reptile": fastadapt_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
