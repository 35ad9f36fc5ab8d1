"""fastadapt's speed settings on one worker: ``fastadapt.bench.lean_backward`` (``fastadapt bench --lean``).

The memory end of the trade-off: the tasks of a meta-batch run one after another on the
calling thread (two intra-op threads), so one task's graph is alive at a time, as in the
peers; where the CPU has native bfloat16, bfloat16 query passes keep that graph smaller than theirs.
MAML: ``precision="bfloat16"`` (where native),
``query_channels_last`` and, second order, ``second_order_kernels``. ProtoNet's speed settings
have no workers to drop (``fastadapt-fast`` is its lean variant too); Reptile's without workers
are ``train.channels_last`` and ``fused_update``.
"""

from __future__ import annotations

import importlib.metadata

from fastadapt.bench import lean_backward

NOTE = "fastadapt, speed settings without task_workers (one task at a time)"
BACKWARD = {"maml": lean_backward, "reptile": lean_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
