"""A CPU allocator that reuses the large blocks of tensors by exact size (process-wide).

A meta-training step allocates the same sequence of activation, gradient and
double-backward buffers for every task and every step. glibc's malloc serves them from
one heap per thread, splitting and merging freed blocks: large buffers end up split for
smaller requests and the heap keeps growing into fresh pages, and a second thread
(``task_workers``) gets its own arena, which touched ~2x the pages it had in use
(``benchmarks/heap_peak.py``). ``use_tensor_pool`` installs, as PyTorch's CPU allocator
(``c10::SetCPUAllocator``), a pool from ``fastadapt/csrc/tensor_pool.cpp``: every request
of at least ``min_bytes`` is rounded up to whole pages and served from a list of free blocks
of exactly that size, shared by all threads, or by a fresh anonymous ``mmap``; freed blocks
go back on their list (up to ``max_cached`` bytes in total; beyond that they are unmapped).
After the first steps every request is a reuse: no page faults, no heap growth, and the
resident size is the peak of the bytes the pool has in use plus what is cached, blocks of
one size never being cut for another. Smaller requests, and blocks over ``max_block``, go to
the allocator the pool replaced.

It is the same idea as PyTorch's CUDA caching allocator, on the CPU. In the peers run at d6f269a
(``benchmarks/peers/run.py --threads 2``, ``benchmarks/README.md``; identical malloc settings
without / with the pool, same run): MAML 20-way 5-step with two task workers 492 -> 416 MB peak
RSS, with one worker 411 -> 375 MB; 5-way 1-shot with two workers 409 ->
393 MB; the plain PyTorch loop 395 -> 377 MB (20-way) and 401 -> 387 MB (5-way). As shipped, MAML
5-way 1-shot with two workers peaked at 392 MB, below every peer's 396-404 MB. Step times are not
compared here: the machine ran faster during the pooled setting (its matmul peak 352 vs 295
GFLOP/s, the plain loop 20-way 1394 vs 1810 ms as well).

The pool is process-wide and stays installed for the life of the process (as
``fastadapt.runtime.tune_allocator``): tensors allocated before it keep their original
deleter, and it cannot be removed safely while its blocks may still be freed through
``Allocator::raw_deallocate``. The engine installs it by default (``train.tensor_pool``).
It needs fastadapt's C++ extension (``fastadapt.extension``; a compiler and ``ninja``).
Forked children (``DataLoader`` workers) inherit it in a consistent state (``pthread_atfork``).
"""

from __future__ import annotations

import logging

from fastadapt.extension import extension_available, load_extension, loaded_extension

log = logging.getLogger(__name__)

MIN_BYTES = 64 * 2**10
MAX_BLOCK = 256 * 2**20
MAX_CACHED = 2**30


def _check_bytes(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def use_tensor_pool(min_bytes: int = MIN_BYTES, max_block: int = MAX_BLOCK, max_cached: int = MAX_CACHED) -> bool:
    """Install the tensor pool as PyTorch's CPU allocator (module docstring); returns whether it is.

    Calling it again updates the limits (already cached blocks stay). Returns ``False``, and
    changes nothing, where fastadapt's C++ extension cannot be built.

    Args:
        min_bytes: smaller requests go to the previous allocator (bytes).
        max_block: larger requests go to the previous allocator (bytes).
        max_cached: free bytes the pool keeps for reuse; blocks freed beyond it are unmapped.
    """
    _check_bytes("min_bytes", min_bytes, 1)
    _check_bytes("max_block", max_block, min_bytes)
    _check_bytes("max_cached", max_cached, 0)
    if not extension_available():
        log.info("tensor pool not installed: fastadapt's C++ extension cannot be built here")
        return False
    return bool(load_extension().tensor_pool_install(min_bytes, max_block, max_cached))


def pool_stats() -> dict[str, int]:
    """The pool's counters: ``installed`` (0/1), ``mapped_bytes`` (held from the system),
    ``live_bytes`` (in tensors now), ``cached_bytes`` (free, kept for reuse), ``peak_live_bytes``,
    ``hits`` and ``misses`` (requests served from the cache / by a fresh mapping)."""
    module = loaded_extension()  # the pool is installed only if the extension was loaded
    return {"installed": 0} if module is None else dict(module.tensor_pool_stats())


def reset_peak() -> int:
    """Restart ``peak_live_bytes`` from the bytes live now (e.g. to find one operation's
    temporaries); returns the peak it replaced (0 if the pool was never installed)."""
    module = loaded_extension()
    return 0 if module is None else int(module.tensor_pool_reset_peak())


def release_cached() -> int:
    """Give the pool's free blocks back to the system; returns their bytes (0 if it was never installed)."""
    module = loaded_extension()
    return 0 if module is None else int(module.tensor_pool_release_cached())
