"""Process-level performance settings the engine applies (each one flag away from off).

``compute_precision`` gives the autocast context behind the learners' ``precision``
option: ``"bfloat16"`` runs matrix multiplications and convolutions in bfloat16 (master
weights, losses and optimiser state stay float32). Whole training steps gained 1.24x
(MAML) to 1.46x (ProtoNet) on an Intel CPU with AMX-BF16 (``benchmarks/precision.py``);
on a CPU without native bfloat16 instructions oneDNN emulates it and the same passes
run many times slower (an AMD EPYC Zen 2, AVX2: the MAML 5w1s second-order fast step 4947 vs
811 ms, ``benchmarks/ablation.py``), so ``"auto"`` picks bfloat16 only where ``native_bfloat16`` says the hardware has it.

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
import functools
import platform
import warnings
from pathlib import Path

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


PRECISIONS = ("float32", "bfloat16", "auto")

# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AMX tiles and AVX512 dot products,
# Arm's BF16 extension (on its "Features" line).
_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def _cpuinfo(cpuinfo: str | Path) -> dict[str, str]:
    """Each key of ``cpuinfo`` with the value of its first line (empty where the file is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags the first processor of ``cpuinfo`` lists (empty where the file is unreadable)."""
    fields = _cpuinfo(cpuinfo)
    return frozenset((fields.get("flags") or fields.get("Features") or "").split())


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The processor's model name from ``cpuinfo`` (``platform.processor()`` where it has none).

    A name without a model number (a hypervisor may report just ``AMD EPYC``) gets the CPU
    family and model appended, ``"AMD EPYC (family 23, model 1)"``: two such machines differ
    (here: a first-generation EPYC, 128-bit AVX2 units, and a second-generation one) and
    their speed figures must not be mixed up.
    """
    fields = _cpuinfo(cpuinfo)
    name, family, model = fields.get("model name"), fields.get("cpu family"), fields.get("model")
    if not name:
        return platform.processor() or platform.machine()
    if any(c.isdigit() for c in name) or family is None or model is None:
        return name
    return f"{name} (family {family}, model {model})"


def hardware() -> dict[str, object]:
    """What qualifies a speed or precision figure of this process: the CPU's model, PyTorch's
    kernel level for it (``AVX2``, ``AVX512``, ...), whether it has native bfloat16
    (``native_bfloat16``), the torch version and the intra-op threads."""
    return {
        "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native_bfloat16("cpu"), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


@functools.cache
def native_bfloat16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` runs bfloat16 matrix products and convolutions on native instructions.

    CPU: the processor lists AMX-BF16 or AVX512-BF16 (x86) or BF16 (Arm) in ``/proc/cpuinfo``
    (elsewhere, or unreadable: ``False``); without them oneDNN emulates bfloat16 in float32
    registers with conversions around every block. CUDA: ``torch.cuda.is_bf16_supported``
    without emulation. Other devices: ``True`` (their autocast decides).
    """
    if device_type == "cpu":
        return bool(cpu_flags() & _BF16_CPU_FLAGS)
    if device_type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no including_emulation argument
            return torch.cuda.is_bf16_supported()
    return True


def check_precision(precision: str) -> None:
    """Raise naming the valid choices unless ``precision`` is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def resolve_precision(precision: str, device_type: str) -> str:
    """``"float32"`` or ``"bfloat16"``: what ``precision`` means for tensors on ``device_type``.

    ``"auto"`` is bfloat16 where ``native_bfloat16(device_type)``, float32 elsewhere. An explicit
    ``"bfloat16"`` is honoured everywhere (same arithmetic, native or emulated), with a
    ``RuntimeWarning`` (once per process and call site) where it is emulated.
    """
    check_precision(precision)
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device_type) else "float32"
    if precision == "bfloat16" and not native_bfloat16(device_type):
        warnings.warn(
            f"precision='bfloat16' on a {device_type} without native bfloat16 instructions: emulated, so "
            "typically several times slower than float32 (precision='auto' picks float32 here)",
            RuntimeWarning, stacklevel=3,
        )
    return precision


def compute_precision(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """The context a learner's ``precision`` setting runs its selected forward passes in.

    Args:
        precision: ``"float32"`` (no autocast), ``"bfloat16"`` (``torch.autocast`` to bfloat16)
            or ``"auto"`` (bfloat16 where the hardware has it natively; ``resolve_precision``).
        device_type: ``"cpu"``, ``"cuda"``, ... (the inputs' ``tensor.device.type``).
    """
    if resolve_precision(precision, device_type) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` in the calling thread (any torch >= 2.2)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
