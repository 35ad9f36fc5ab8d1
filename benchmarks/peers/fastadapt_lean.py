"""fastadapt's speed settings at their memory end: ``fastadapt.bench.lean_backward`` (``fastadapt bench --lean``).

MAML and Reptile: the tasks of a meta-batch run one after another on the calling thread (two
intra-op threads), so one task's graph is alive at a time, as in the peers; where the CPU has
native bfloat16, bfloat16 query passes keep that graph smaller than theirs. MAML:
``precision="bfloat16"`` (where native), ``query_channels_last``, ``query_compact_activations``
and, second order, ``second_order_kernels``; Reptile: ``train.channels_last`` and ``fused_update``.
ProtoNet (one episode a step, no tasks to split): its fast settings plus ``compact_activations``
(the first block's largest maps recomputed in the backward instead of kept).
"""

from __future__ import annotations

import importlib.metadata

from fastadapt.bench import lean_backward

NOTE = "fastadapt, speed settings at their memory end (MAML, Reptile: one task at a time; ProtoNet: compact activations)"
BACKWARD = {"maml": lean_backward, "reptile": lean_backward, "protonet": lean_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
