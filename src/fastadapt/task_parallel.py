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

``map_interleaved`` is the finer-grained scheduler for tasks written as generators that
yield between steps (Reptile's inner minibatch steps): the threads take single steps of
any task in turn, so a meta-batch whose task count is not a multiple of the threads (5
Reptile tasks on 2 threads) keeps every thread busy until the end, where contiguous shares
would leave one thread idle for a whole task.

The threads are kept between calls (a new thread per call made a Reptile step 87 instead of
82 ms, an ad hoc measurement).

The results are deterministic: shares are contiguous, in task order, and the caller
combines the per-share (per-task) results in that order. Random operations inside the model
(dropout) draw from the global generator in an order that depends on thread timing,
so a model with dropout is only reproducible with ``workers=1``.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import torch
from torch import nn

from fastadapt.runtime import autocast_enabled

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
    autocast = any(autocast_enabled(device) for device in ("cpu", "cuda"))
    stacks = (torch._C._len_torch_dispatch_stack(), torch._C._len_torch_function_stack())
    return autocast or any(stacks) or torch._C._functorch.peek_interpreter_stack() is not None


class _Worker:
    """A daemon thread that runs the callables handed to it, one after another, and is kept."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="fastadapt-task-worker").start()

    def _loop(self) -> None:
        while True:
            fn, done = self.jobs.get()
            try:
                fn()  # callers pass functions that catch their own exceptions
            finally:
                done.set()


_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()


def _forget_workers() -> None:
    """In a forked child: none of the parent's threads exist, and the lock may have been held."""
    global _IDLE_LOCK
    _IDLE.clear()
    _IDLE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_workers)


def _start(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` on a kept idle worker thread (a new one if none is idle); returns ``join``."""
    with _IDLE_LOCK:
        worker = _IDLE.pop() if _IDLE else _Worker()
    done = threading.Event()
    worker.jobs.put((fn, done))

    def join() -> None:
        done.wait()
        with _IDLE_LOCK:
            _IDLE.append(worker)

    return join


def _on_threads(model: nn.Module, workers: int, fn: Callable[[int, nn.Module], None]) -> None:
    """``fn(k, module_k)`` for ``k < workers`` at once: ``k = 0`` on the calling thread with
    ``model``, the others on kept threads with replicas made before any of them starts; each
    thread with ``max(1, torch.get_num_threads() // workers)`` intra-op threads and the caller's
    grad mode. The first exception raised is re-raised here after all have finished."""
    previous = torch.get_num_threads()
    each = max(1, previous // workers)
    grad_enabled = torch.is_grad_enabled()
    errors: list[BaseException] = []
    # Made here, before ``fn`` runs on ``model``: while a functional call is in flight on a module,
    # its attributes hold that call's tensors, and a copy taken then would carry them.
    replicas = [model] + [replica(model) for _ in range(1, workers)]

    def run(k: int) -> None:
        try:
            torch.set_num_threads(each)
            with torch.set_grad_enabled(grad_enabled):
                fn(k, replicas[k])
        except BaseException as error:  # re-raised on the calling thread
            errors.append(error)

    torch.set_num_threads(each)
    joins = []
    try:
        joins = [_start(lambda k=k: run(k)) for k in range(1, workers)]
        fn(0, model)
    except BaseException as error:
        errors.insert(0, error)
    finally:
        for join in joins:
            join()
        torch.set_num_threads(previous)
    if errors:
        raise errors[0]


def map_shares(model: nn.Module, tasks: int, workers: int, fn: Callable[[nn.Module, range], R]) -> list[R]:
    """``[fn(module, share) for share in shares(tasks, workers)]``, the shares on separate threads.

    The first share runs on the calling thread with ``model``, each other share on a kept thread
    with its own ``replica(model)`` (intra-op threads, grad mode and exceptions as in
    ``_on_threads``), unless ``caller_state_is_thread_local()``: then all run in turn on the
    calling thread.
    """
    parts = shares(tasks, workers)
    if len(parts) <= 1 or caller_state_is_thread_local():
        return [fn(model, part) for part in parts]
    results: list[Any] = [None] * len(parts)

    def run(k: int, module: nn.Module) -> None:
        results[k] = fn(module, parts[k])

    _on_threads(model, len(parts), run)
    return results


Job = Generator[None, nn.Module, R]
"""A task written as a generator: every step of work starts with ``module = yield`` (the module
to call for that step: steps may run on different threads) and ``return`` gives the result."""


def run_job(job: Job[R], model: nn.Module) -> R:
    """Run ``job`` to the end on this thread, every step with ``model``."""
    next(job)  # to the first ``yield``: no work is done before it
    try:
        while True:
            job.send(model)
    except StopIteration as stop:
        return stop.value


def map_interleaved(model: nn.Module, tasks: int, workers: int, job: Callable[[int], Job[R]]) -> list[R]:
    """``[run_job(job(t), model) for t in range(tasks)]``, steps of the jobs spread over threads.

    ``workers`` threads (the caller with ``model``, the others with replicas, intra-op threads
    and grad mode as in ``map_shares``) each take the next waiting job, run one step of it and
    put it back at the end of the queue, so all threads stay busy while any job has steps
    left. At most ``workers + 1`` jobs are under way at once (the next task is started when
    one finishes): each holds its state (Reptile: adapted weights and Adam moments) from its
    first step to its last, and one job more than threads is enough to keep them busy (with
    only ``workers`` under way, a thread would idle while the last job runs alone). With
    Reptile's in-order sum this took its two-worker variant from 339 to 336 MB peak RSS as
    shipped (``benchmarks/results/peers-recheck-ckpt.jsonl`` against ``peers.jsonl`` at d6f269a).
    A job's steps run one at a time, in order. Results are in task order; a job must reach the
    model only through the module each of its steps receives.
    """
    check_workers(workers)
    workers = min(workers, tasks)
    if workers <= 1 or caller_state_is_thread_local():
        return [run_job(job(t), model) for t in range(tasks)]
    waiting: deque[tuple[int, Job[R]]] = deque()
    unstarted = iter(range(tasks))

    def start_next() -> None:  # called with ``lock`` held, or before the threads start
        t = next(unstarted, None)
        if t is not None:
            gen = job(t)
            next(gen)
            waiting.append((t, gen))

    for _ in range(workers + 1):
        start_next()
    results: list[Any] = [None] * tasks
    lock, failed = threading.Lock(), threading.Event()

    def run(k: int, module: nn.Module) -> None:
        while not failed.is_set():
            with lock:
                if not waiting:
                    return
                t, gen = waiting.popleft()
            try:
                gen.send(module)
            except StopIteration as stop:
                results[t] = stop.value
                with lock:
                    start_next()
                continue
            except BaseException:
                failed.set()  # the other threads stop taking steps
                raise
            with lock:
                waiting.append((t, gen))

    _on_threads(model, workers, run)
    return results
