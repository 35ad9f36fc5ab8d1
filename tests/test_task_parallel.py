"""fastadapt.task_parallel: shares, replicas, threads."""

import os
import signal
import threading
import time

import pytest
import torch

from fastadapt.models import create_model
from fastadapt.task_parallel import map_interleaved, map_shares, replica, run_job, shares


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


def stepping_job(model, log, steps=4, fail_at=None):
    """A job of ``steps`` steps that logs (task, step, thread, module is model) and returns its task."""

    def job(t):
        for step in range(steps):
            module = yield
            if (t, step) == fail_at:
                raise RuntimeError(f"task {t} failed at step {step}")
            time.sleep(0.005)  # long enough that both threads take steps
            log.append((t, step, threading.get_ident(), module is model, torch.is_grad_enabled()))
        return t * 10

    return job


def test_map_interleaved_runs_steps_of_any_task_on_any_thread_in_order():
    model, log = torch.nn.Linear(2, 2), []
    threads_before = torch.get_num_threads()
    with torch.no_grad():
        results = map_interleaved(model, 3, 2, stepping_job(model, log))
    assert results == [0, 10, 20]  # task order
    for t in range(3):  # each job's steps ran once each, in order
        assert [step for task, step, *_ in log if task == t] == [0, 1, 2, 3]
    me = threading.get_ident()
    assert {thread for *_, thread, _, _ in log} != {me}  # a kept thread took steps too
    assert all(is_model == (thread == me) for _, _, thread, is_model, _ in log)  # replicas off the caller
    assert not any(grad for *_, grad in log)  # the caller's grad mode
    assert torch.get_num_threads() == threads_before
    # 3 tasks of 4 steps on 2 threads: neither thread sits idle while the other runs a whole task
    assert sum(thread == me for _, _, thread, _, _ in log) in range(4, 9)


def test_map_interleaved_has_at_most_one_job_more_than_threads_under_way():
    model, log = torch.nn.Linear(2, 2), []
    with torch.no_grad():
        assert map_interleaved(model, 6, 2, stepping_job(model, log, steps=3)) == [0, 10, 20, 30, 40, 50]
    order = [t for t, *_ in log]
    spans = {t: (order.index(t), len(order) - 1 - order[::-1].index(t)) for t in range(6)}
    under_way = [sum(first <= i <= last for first, last in spans.values()) for i in range(len(order))]
    assert max(under_way) == 3


def test_map_interleaved_on_one_thread_and_under_thread_local_state():
    model, log = torch.nn.Linear(2, 2), []
    assert map_interleaved(model, 2, 1, stepping_job(model, log, steps=2)) == [0, 10]
    assert [(t, s) for t, s, *_ in log] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one job after the other
    log.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        map_interleaved(model, 2, 2, stepping_job(model, log, steps=2))
    assert {thread for _, _, thread, _, _ in log} == {threading.get_ident()}
    assert run_job(stepping_job(model, [], steps=3)(4), model) == 40


def test_map_interleaved_raises_a_step_exception_and_stops_the_others():
    model, log = torch.nn.Linear(2, 2), []
    threads_before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="task 1 failed at step 1"):
        map_interleaved(model, 3, 2, stepping_job(model, log, steps=8, fail_at=(1, 1)))
    assert len(log) < 3 * 8 - 1  # the other jobs were not run to the end
    assert torch.get_num_threads() == threads_before


def test_worker_threads_are_kept_between_calls_and_forgotten_in_a_forked_child():
    def fn(module, share):
        return threading.get_ident()

    model = torch.nn.Linear(1, 1)
    first, second = map_shares(model, 2, 2, fn)[1], map_shares(model, 2, 2, fn)[1]
    assert first == second != threading.get_ident()
    pid = os.fork()
    if pid == 0:  # the child has no kept threads: handing work to one would wait forever
        os._exit(0 if map_shares(model, 2, 2, fn)[1] != threading.get_ident() else 1)
    deadline = time.monotonic() + 30
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited[0] == 0:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("map_shares in a forked child hung")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
