"""The tasks of a meta-batch on several threads of one process.

A meta-batch's tasks are independent until their meta-gradients are summed, and on
a CPU the per-task work of Omniglot-sized episodes (5 to 80 images through a Conv-4)
is too small to keep several cores busy with intra-op parallelism alone. ``map_shares``
gives each of ``workers`` threads a contiguous share of the tasks and divides the
intra-op threads among them, so the cores work on different tasks at once (the
kernels and the autograd engine release the GIL). It is the in-process counterpart of
the task split of ``fastadapt.engine.distributed``.

``torch.func.functional_call`` swaps tensors into the module it is given for the
duration of the call, so threads must not share a module: each worker calls a
``replica`` whose submodules are copies while its parameters and buffers are the
original tensors (nothing is copied that the call does not replace).

``fn`` must reach the model only through the module it is given: while one thread is inside
``functional_call`` on a module, that module's attributes hold the call's tensors, so reading
``model.named_parameters()`` from another thread would see them.

The results are deterministic: shares are contiguous, in task order, and the caller
combines the per-share results in share order. Random operations inside the model
(dropout) draw from the global generator in an order that depends on thread timing,
so a model with dropout is only reproducible with ``workers=1``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
import threading
from typing import Any, TypeVar

import torch
from torch import nn

R = TypeVar("R")


def check_workers(workers: int) -> None:
    """Raise unless ``workers`` is a positive ``int``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"task_workers must be an int >= 1, got {workers!r}")


def shares(tasks: int, workers: int) -> list[range]:
    """Contiguous, non-empty shares of ``range(tasks)`` for at most ``workers`` workers.

    The first ``tasks % workers`` shares hold one task more than the others.
    """
    check_workers(workers)
    base, extra = divmod(tasks, workers)
    bounds, start = [], 0
    for k in range(min(workers, tasks)):
        stop = start + base + (k < extra)
        bounds.append(range(start, stop))
        start = stop
    return bounds


def replica(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` that shares its parameter and buffer tensors."""
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def caller_state_is_thread_local() -> bool:
    """Whether the calling thread runs under state that new threads would not see.

    Autocast, ``torch.func`` transforms and Python dispatch or function modes (e.g.
    ``torch.utils.flop_counter.FlopCounterMode``) are thread-local: work moved to another
    thread would silently escape them, so ``map_shares`` runs the shares in turn instead.
    """
    try:
        autocast = any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda"))
    except TypeError:  # torch < 2.4 has no device argument
        autocast = torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    stacks = (torch._C._len_torch_dispatch_stack(), torch._C._len_torch_function_stack())
    return autocast or any(stacks) or torch._C._functorch.peek_interpreter_stack() is not None


def map_shares(model: nn.Module, tasks: int, workers: int, fn: Callable[[nn.Module, range], R]) -> list[R]:
    """``[fn(module, share) for share in shares(tasks, workers)]``, the shares on separate threads.

    The first share runs on the calling thread with ``model``; each other share on a thread
    of its own with its own ``replica(model)``, unless ``caller_state_is_thread_local()``
    (then all run in turn on the calling thread). While they run, every thread has
    ``max(1, torch.get_num_threads() // workers)`` intra-op threads (the caller's setting is
    restored after) and the caller's grad mode. An exception raised by ``fn`` on any
    thread is raised here, after all threads have finished.
    """
    parts = shares(tasks, workers)
    if len(parts) <= 1 or caller_state_is_thread_local():
        return [fn(model, part) for part in parts]
    previous = torch.get_num_threads()
    each = max(1, previous // len(parts))
    grad_enabled = torch.is_grad_enabled()
    results: list[Any] = [None] * len(parts)
    errors: list[BaseException] = []

    # Made here, before ``fn`` runs on ``model``: while a functional call is in flight on a module,
    # its attributes hold that call's tensors, and a copy taken then would carry them.
    replicas = [model] + [replica(model) for _ in parts[1:]]

    def run(k: int) -> None:
        try:
            torch.set_num_threads(each)
            with torch.set_grad_enabled(grad_enabled):
                results[k] = fn(replicas[k], parts[k])
        except BaseException as error:  # re-raised on the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,), name=f"fastadapt-task-{k}") for k in range(1, len(parts))]
    torch.set_num_threads(each)
    try:
        for thread in threads:
            thread.start()
        results[0] = fn(replicas[0], parts[0])
    finally:
        for thread in threads:
            thread.join()
        torch.set_num_threads(previous)
    if errors:
        raise errors[0]
    return results
