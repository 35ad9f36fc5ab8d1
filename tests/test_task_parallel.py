"""fastadapt.task_parallel: shares, replicas, threads."""

import threading

import pytest
import torch

from fastadapt.models import create_model
from fastadapt.task_parallel import map_shares, replica, shares


def test_shares_are_contiguous_balanced_and_never_empty():
    assert shares(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert shares(2, 4) == [range(0, 1), range(1, 2)]
    assert shares(5, 1) == [range(0, 5)]
    assert shares(0, 2) == []


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_invalid_worker_counts_are_refused(workers):
    with pytest.raises(ValueError, match="task_workers must be an int >= 1"):
        shares(4, workers)


def test_replica_shares_tensors_but_not_modules():
    model = create_model("conv4", hidden=4, bn="running", image_size=16, out_features=3)
    copy = replica(model)
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters()))
    assert all(a is b for a, b in zip(model.buffers(), copy.buffers()))
    assert all(a is not b for a, b in zip(model.modules(), copy.modules()))


def test_map_shares_runs_shares_on_threads_with_replicas_in_order():
    model = torch.nn.Linear(2, 2)
    threads_before = torch.get_num_threads()

    def fn(module, share):
        return threading.get_ident(), module is model, list(share), torch.is_grad_enabled()

    with torch.no_grad():
        results = map_shares(model, 5, 2, fn)
    assert [r[2] for r in results] == [[0, 1, 2], [3, 4]]
    assert results[0][:2] == (threading.get_ident(), True)  # the first share on the caller, with the model
    assert results[1][0] != threading.get_ident() and not results[1][1]  # the others on threads, with replicas
    assert not any(r[3] for r in results)  # the caller's grad mode is carried into the threads
    assert torch.get_num_threads() == threads_before
    single = map_shares(model, 5, 1, fn)
    assert single == [(threading.get_ident(), True, [0, 1, 2, 3, 4], True)]


def test_map_shares_raises_a_worker_exception():
    def fn(module, share):
        if 3 in share and module is not model:
            raise RuntimeError("task 3 failed")
        return share

    model = torch.nn.Linear(1, 1)
    threads_before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="task 3 failed"):
        map_shares(model, 4, 2, fn)
    assert torch.get_num_threads() == threads_before


def test_thread_local_state_keeps_the_shares_on_the_calling_thread():
    # FLOP counting, autocast and torch.func transforms would not reach other threads.
    from torch.utils.flop_counter import FlopCounterMode

    def fn(module, share):
        return threading.get_ident(), torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype

    me = threading.get_ident()
    with FlopCounterMode(display=False) as counter:
        assert [r[0] for r in map_shares(torch.nn.Linear(1, 1), 4, 2, fn)] == [me, me]
    assert counter.get_total_flops() == 2 * 2 * 2 * 2 * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert map_shares(torch.nn.Linear(1, 1), 4, 2, fn) == [(me, torch.bfloat16)] * 2


class Blocking(torch.nn.Module):
    """A module whose forward signals ``entered`` and waits for ``release`` (class attributes)."""

    entered, release = threading.Event(), threading.Event()

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x):
        self.entered.set()
        assert self.release.wait(10)
        return self.lin(x)


def test_other_threads_never_see_a_functional_call_in_flight_on_the_caller():
    # functional_call swaps tensors into the module's attributes; a replica copied (or the model
    # read) during that window would carry the swapped tensors instead of the parameters.
    model = Blocking()
    original = model.lin.weight

    def fn(module, share):
        if module is model:  # the caller's share: hold a functional call open on the model
            zeros = {"lin.weight": torch.zeros(2, 2), "lin.bias": torch.zeros(2)}
            return torch.func.functional_call(module, zeros, (torch.ones(1, 2),)).sum().item()
        assert model.entered.wait(10)
        # the hazard: the model itself shows the call's tensors now; the replica given to fn does not
        seen = module.lin.weight is original and model.lin.weight is not original
        model.release.set()
        return seen

    assert map_shares(model, 2, 2, fn) == [0.0, True]
