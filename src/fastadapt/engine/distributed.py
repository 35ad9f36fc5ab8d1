"""Data-parallel meta-training over ``torch.distributed`` (launched by ``torchrun``).

The tasks of meta-batch ``k`` (episodes ``[k*B, (k+1)*B)``) are split into
contiguous shares, one per rank (sizes differ by at most one; a rank may get
none when ``B < world_size``). Every rank samples its own share from the same
``(seed, episode)`` stream, so N processes see exactly the episodes one process
sees.

**Explicit all-reduce, not DDP.** Each learner's ``meta_loss`` is the mean over
its tasks, and its backward pass already contains the inner loops (second-order
terms, ``functional_call``, Reptile's surrogate). Summing ``(n_r / B) * grad_r``
over ranks after ``backward()`` is then exactly the gradient of the mean over all
``B`` tasks, whatever the algorithm does inside. DDP would hook the backward of
a module it wraps; with inner loops that call the backbone functionally, several
times per task, or not at all on a rank without tasks, its bucket hooks fire an
unpredictable number of times (the peer libraries' DDP failures), and it only
averages equally, which is wrong for uneven shares. One flat all-reduce per step
carries the weighted gradients, a has-gradient flag per parameter (so an unused
parameter keeps ``grad=None`` as in one process), and the loss and metric sums.

**BatchNorm.** Batch statistics are those of each backbone call on its rank. The
gradient learners normalise each task on its own (per-task statistics: nothing
to synchronise, results match one process). Learners that embed the whole
meta-batch in one call (ProtoNet, Matching, Relation) normalise over the rank's
share instead of the whole meta-batch when ``B > 1`` (as DDP without
SyncBatchNorm does); their shipped recipes use ``B = 1``, where this is exact.
Running statistics (``running_mean``/``running_var``) are replaced after every
step by their average weighted by each rank's share ``n_r / B`` (a rank without
tasks weighs 0), so all ranks hold the same buffers; ``num_batches_tracked``
takes the maximum. With ``B = 1`` this is the single process's update exactly.

**Failures.** Collectives run with a timeout (``FASTADAPT_DIST_TIMEOUT_S``,
default 600 s). A rank that dies closes its sockets: the survivors' next
collective fails at once and raises ``PeerLostError``; ``torchrun`` also stops
the whole group when one worker exits. A rank that hangs is detected at the
timeout. Only rank 0 touches the run directory; it reads checkpoints and sends
their contents to the others, so nodes need no shared file system. A group restarted
by ``torchrun --max-restarts`` never reads the dead group's keys (``engine.rendezvous``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastadapt.engine import rendezvous

T = TypeVar("T")
TIMEOUT_ENV = "FASTADAPT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


class PeerLostError(RuntimeError):
    """A collective failed: another rank died, hung past the timeout, or the network failed."""


@dataclass(frozen=True)
class World:
    """Where this process stands in the group.

    Attributes:
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: the same on this node.
        owns_group: the process group was created by ``init`` (and is destroyed by ``teardown``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1


SINGLE = World()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"torchrun environment incomplete: {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be an integer, got {value!r}") from None


def detect() -> World:
    """The launch this process belongs to, from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Without ``WORLD_SIZE`` (a plain ``python`` launch) or with ``WORLD_SIZE=1`` it is ``SINGLE``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size == 1:
        return SINGLE
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world_size)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world):
        raise RuntimeError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size} "
                           f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return World(rank, world_size, local_rank, local_world)


def timeout_s() -> float:
    """Collective timeout in seconds: ``$FASTADAPT_DIST_TIMEOUT_S`` or 600."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0, got {value!r}")
    return seconds


def backend() -> str:
    """``gloo`` for CPU tensors, plus ``nccl`` for CUDA tensors when a GPU is present."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init() -> World:
    """Join the torchrun group (creating the process group unless the caller already did).

    Returns ``SINGLE`` outside torchrun. On a GPU machine the CUDA device is set to
    ``LOCAL_RANK``.
    """
    world = detect()
    if not world.active:
        return world
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; cannot run under torchrun")
    if dist.is_initialized():
        if dist.get_world_size() != world.world_size or dist.get_rank() != world.rank:
            raise RuntimeError(
                f"the existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
                f"match the torchrun environment (RANK={world.rank}, WORLD_SIZE={world.world_size})"
            )
        return world
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    # torch.distributed.nn binds ``group.WORLD`` as a default argument when it is imported. Imported
    # after the group exists (building an optimizer pulls it in through torch._dynamo), it keeps the
    # group and its gloo threads alive past ``teardown``; at interpreter exit such a thread, releasing
    # the tensors of the last collective, aborts the process ("terminate called without an active
    # exception"). Imported now, the default is None.
    importlib.import_module("torch.distributed.nn")
    timeout = timedelta(seconds=timeout_s())
    try:
        store = rendezvous.group_store(world.rank, world.world_size, timeout)  # keys fresh for this group
    except TimeoutError as error:
        raise PeerLostError(f"{error} (set {TIMEOUT_ENV})") from None
    dist.init_process_group(backend(), store=store, rank=world.rank, world_size=world.world_size, timeout=timeout)
    return World(world.rank, world.world_size, world.local_rank, world.local_world_size, owns_group=True)


def teardown(world: World) -> None:
    """Destroy the process group if ``init`` created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def default_threads(world: World) -> int:
    """Intra-op threads per rank: the node's CPUs shared among its ranks (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // world.local_world_size)


def share(batch_size: int, world: World) -> tuple[int, int]:
    """This rank's tasks of a meta-batch of ``batch_size``: offsets ``[start, stop)``.

    Contiguous shares whose sizes differ by at most one, the first ``batch_size % world_size``
    ranks taking one more. ``start == stop`` for a rank without tasks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    base, extra = divmod(batch_size, world.world_size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (world.rank < extra)


def eval_batches(batches: int, world: World) -> range:
    """Indices of the evaluation batches this rank runs: ``rank, rank + world_size, ...``.

    Whole batches are dealt out so every predictor call sees the same episodes as in one
    process (batch statistics across an evaluation batch stay the same).
    """
    return range(world.rank, batches, world.world_size)


_COMM_SECONDS = [0.0]


def comm_seconds() -> float:
    """Wall time spent inside collectives by this process so far (for measurements)."""
    return _COMM_SECONDS[0]


@contextmanager
def _collective(what: str, world: World) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except (RuntimeError, ValueError) as error:
        if isinstance(error, PeerLostError) or not dist.is_initialized():
            raise
        raise PeerLostError(
            f"rank {world.rank} of {world.world_size}: {what} failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); another rank has probably died or hung "
            f"(timeout {timeout_s():g} s, set {TIMEOUT_ENV}). Resume from the last checkpoint with --resume, "
            "or let torchrun --max-restarts restart the group"
        ) from error
    finally:
        _COMM_SECONDS[0] += time.perf_counter() - started


def reduce_gradients(parameters: Iterable[nn.Parameter], weight: float, extras: list[float], world: World) -> list[float]:
    """Replace every ``.grad`` by ``sum_r weight_r * grad_r`` over ranks, in one all-reduce.

    Args:
        parameters: the trainable parameters, in the same order on every rank.
        weight: this rank's share of the meta-batch, ``n_r / B`` (0 for a rank without tasks).
        extras: numbers summed over ranks in the same message (e.g. ``weight * loss``).

    Returns:
        ``extras`` summed over ranks. A parameter without a gradient on every rank keeps
        ``grad = None``; otherwise missing gradients count as zero.
    """
    params = list(parameters)
    if not world.active:
        return list(extras)
    device = params[0].device if params else torch.device("cpu")
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    pieces = [p.grad.detach().reshape(-1).to(dtype) * weight if p.grad is not None
              else torch.zeros(p.numel(), device=device, dtype=dtype) for p in params]
    flags = [1.0 if p.grad is not None else 0.0 for p in params]
    flat = torch.cat([*pieces, torch.tensor(flags + list(extras), dtype=dtype, device=device)])
    with _collective("gradient all-reduce", world):
        dist.all_reduce(flat)
    offset = sum(piece.numel() for piece in pieces)
    present = flat[offset:offset + len(params)].tolist()
    offset = 0
    for p, flag in zip(params, present):
        chunk = flat[offset:offset + p.numel()]
        offset += p.numel()
        p.grad = chunk.view_as(p).to(p.dtype).clone() if flag > 0 else None
    return flat[len(flat) - len(extras):].tolist()


def _running_buffers(module: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """``(running_mean, running_var)`` of every BatchNorm layer that tracks them."""
    return [(m.running_mean, m.running_var) for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None and m.running_var is not None]


def sync_running_stats(module: nn.Module, weight: float, world: World) -> None:
    """Average BatchNorm running statistics over ranks, weighted by each rank's share.

    Args:
        module: the model; its BatchNorm ``running_mean``/``running_var`` are overwritten in place.
        weight: ``n_r / B``; the weights of all ranks sum to 1, so a lone contributing rank
            (``B = 1``) passes its buffers on unchanged.
    """
    pairs = _running_buffers(module)
    if not world.active or not pairs:
        return
    flat = torch.cat([t.reshape(-1).double() * weight for pair in pairs for t in pair])
    counts = torch.stack([m.num_batches_tracked for m in module.modules()
                          if isinstance(m, nn.modules.batchnorm._NormBase) and m.num_batches_tracked is not None])
    with _collective("BatchNorm running-statistics all-reduce", world):
        dist.all_reduce(flat)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    offset = 0
    for pair in pairs:
        for t in pair:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    trackers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.num_batches_tracked is not None]
    for m, count in zip(trackers, counts):
        m.num_batches_tracked.copy_(count)


def gather_episodes(values: Tensor, positions: Tensor, total: int, world: World) -> Tensor:
    """All ranks' per-episode values in episode order.

    Args:
        values: ``(m,)`` this rank's values; ``positions``: ``(m,)`` their episode indices.
        total: number of episodes over all ranks (each index held by exactly one rank).

    Returns:
        ``(total,)`` float32, identical on every rank.
    """
    full = torch.zeros(total, dtype=torch.float32)
    full[positions] = values.float()
    if world.active:
        with _collective("evaluation all-gather", world):
            dist.all_reduce(full)  # disjoint positions: adding zeros is exact
    return full


def broadcast(value: T, world: World, what: str = "broadcast") -> T:
    """Rank 0's ``value`` (any picklable object, tensors included) on every rank."""
    if not world.active:
        return value
    box = [value if world.is_main else None]
    with _collective(what, world):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], world: World, what: str) -> T:
    """Run ``fn`` on rank 0 and hand its result, or its exception, to every rank.

    Checks that touch the run directory happen once, and a refusal (``FileExistsError``,
    ``ValueError``, ...) is raised on every rank instead of leaving the others waiting.
    """
    if not world.active:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if world.is_main:
        try:
            outcome = (True, fn())
        except Exception as error:  # re-raised below, on every rank
            outcome = (False, error if _picklable(error) else RuntimeError(f"{type(error).__name__}: {error}"))
    ok, payload = broadcast(outcome, world, what)
    if not ok:
        raise payload
    return payload


def _picklable(error: Exception) -> bool:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def check_same(value: Any, world: World, what: str) -> None:
    """Raise on every rank unless ``value`` equals rank 0's (config, versions, initial weights)."""
    if not world.active:
        return
    values: list[Any] = [None] * world.world_size
    with _collective(f"{what} check", world):
        dist.all_gather_object(values, value)
    differing = [r for r, v in enumerate(values) if v != values[0]]
    if differing:
        raise RuntimeError(
            f"ranks {differing} have a different {what} than rank 0 ({values[differing[0]]!r} vs {values[0]!r}); "
            "launch every rank with the same command, code and torch version"
        )


def fingerprint(module: nn.Module) -> list[float]:
    """A cheap summary of a module's state (per-tensor float64 sums) to compare across ranks."""
    return [float(t.double().sum()) for t in module.state_dict().values() if torch.is_tensor(t)]


def any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` holds on at least one rank; every rank gets the answer."""
    if not world.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    with _collective("all-reduce", world):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def decide(flag: bool, world: World) -> bool:
    """Rank 0's decision (e.g. the time budget ran out) on every rank."""
    if not world.active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    with _collective("broadcast", world):
        dist.broadcast(value, src=0)
    return bool(value.item())
