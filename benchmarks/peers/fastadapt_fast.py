"""fastadapt with its speed settings: ``fastadapt.bench.fast_backward`` (``speed_options``).

MAML: ``precision="bfloat16"`` where the CPU has native bfloat16 (query passes under bfloat16
autocast, inner loop float32; float32 elsewhere, ``fastadapt.runtime.native_bfloat16``),
``query_channels_last`` (query passes on NHWC parameters), ``task_workers`` = the benchmark's threads
and, second order, ``second_order_kernels`` (compiled convolution/BatchNorm double backward). ProtoNet: ``precision="bfloat16"`` (where native) and
``train.channels_last``. Reptile: ``task_workers``, ``train.channels_last`` and ``fused_update`` (compiled inner Adam step). ``fastadapt bench --fast`` times the same.
"""

from __future__ import annotations

import importlib.metadata

from fastadapt.bench import fast_backward

NOTE = "fastadapt, precision=bfloat16 where native (MAML, ProtoNet), query_channels_last (MAML), second_order_kernels (MAML 2nd order), task_workers=threads (MAML, Reptile), channels_last (ProtoNet, Reptile), fused_update (Reptile)"
BACKWARD = {"maml": fast_backward, "protonet": fast_backward, "reptile": fast_backward}


def version() -> str:
    return importlib.metadata.version("fastadapt")
