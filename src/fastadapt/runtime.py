"""Process-level performance settings the engine applies (each one flag away from off).

``compute_precision`` gives the autocast context behind the learners' ``precision``
option: ``"bfloat16"`` runs matrix multiplications and convolutions in bfloat16 (master
weights, losses and optimiser state stay float32). Whole training steps gained 1.24x
(MAML) to 1.46x (ProtoNet) on the project's AVX512-BF16 CPU (``benchmarks/precision.py``).

``tune_allocator`` stops glibc's malloc from handing large freed blocks back to the
system after every step. By default glibc serves big temporaries (a meta-batch, a
layer's activations) with fresh ``mmap`` calls and unmaps them when freed, so every
training step page-faults the same memory back in; on the project's VM the design
notes measured 15-30% of a meta-iteration (episode sampling alone is within noise on a
quiet machine, ``benchmarks/README.md``). Keeping freed memory in the process removes
it, at the price of a resident size that stays at its peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform

import torch

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def tune_allocator(trim_threshold: int = 2**31 - 1, top_pad: int = 256 * 2**20) -> bool:
    """Keep freed memory in the process (glibc only); returns whether the setting was applied.

    Equivalent to ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<trim_threshold>
    MALLOC_TOP_PAD_=<top_pad>`` in the environment, but effective after start-up.

    Args:
        trim_threshold: free memory at the top of the heap kept before returning any (bytes).
        top_pad: extra memory requested from the system with each heap extension (bytes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    applied = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return bool(applied and libc.mallopt(_M_TOP_PAD, top_pad))


PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str) -> None:
    """Raise naming the valid choices unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def compute_precision(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context a learner's ``precision`` setting runs its selected forward passes in.

    Args:
        precision: ``"float32"`` (no autocast) or ``"bfloat16"`` (``torch.autocast`` to bfloat16).
        device_type: ``"cpu"``, ``"cuda"``, ... (the inputs' ``tensor.device.type``).
    """
    check_precision(precision)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` in the calling thread (any torch >= 2.2)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
