"""The store a process group created by ``fastadapt.engine.distributed.init`` keeps its keys in.

``torchrun`` keeps one store for every worker group it starts (``--max-restarts``), and a
process group's keys (each rank's gloo address) are the same in every group: a restarted rank
could read the address of a dead rank of the previous group ("connectFullMesh failed ...
Connection refused"). ``TORCHELASTIC_RESTART_COUNT`` cannot name the group: an agent does not
count restarts for membership changes, so nodes can disagree on it. ``group_store`` therefore
prefixes the group's keys with a token that rank 0 hands out to this group alone.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import torch.distributed as dist


def group_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The launcher's store (``env://``), with keys under ``fastadapt/group-<token>/``.

    Raises ``TimeoutError`` (rank 0) when a rank has not joined within ``timeout``.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    store = dist.PrefixStore("fastadapt", store)
    return dist.PrefixStore(f"group-{group_token(store, rank, world_size, timeout)}", store)


def group_token(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> str:
    """A key prefix used by this worker group alone, handed out by rank 0.

    Each other rank asks under a fresh nonce and rank 0 answers with a fresh token, so no key
    read here can be left from an earlier group. Other ranks wait for the answer up to the
    store's timeout; rank 0 raises ``TimeoutError`` naming the ranks that did not join.
    """
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"hello/{rank}", nonce)
        token = store.get(f"welcome/{nonce}").decode()  # waits up to the timeout
        store.set(f"{token}/joined/{rank}", "1")
        return token
    token, answered = uuid.uuid4().hex, {}
    pending, deadline = set(range(1, world_size)), time.monotonic() + timeout.total_seconds()
    while pending:
        for other in sorted(pending):
            # hello/<rank> may still hold a dead rank's nonce: answering it too is harmless
            nonce = store.get(f"hello/{other}").decode() if store.check([f"hello/{other}"]) else None
            if nonce is not None and answered.get(other) != nonce:
                store.set(f"welcome/{nonce}", token)
                answered[other] = nonce
            if store.check([f"{token}/joined/{other}"]):
                pending.discard(other)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 of {world_size}: ranks {sorted(pending)} did not join within "
                               f"{timeout.total_seconds():g} s")
        time.sleep(0.005)
    return token
