"""``fastadapt.inner_checkpoint``: the same meta-gradients with one inner step's graph alive at a time."""

import pytest
import torch
from torch import nn

from fastadapt.inner_checkpoint import checkpointed_steps
from fastadapt.inner_loop import InnerLoop, adapt, inner_step, kept_graphs


def _conv_net(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(dropout), nn.Flatten(), nn.Linear(144, 3),
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2]),
            torch.randn(9, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,), generator=g))


def _meta_step(model, checkpoint, lr, names=None, steps=3):
    """Query loss, meta-gradient (parameters, then learned step sizes) and buffers after ``adapt``."""
    x, y, qx, qy = _data()
    params = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    torch.manual_seed(5)  # the dropout masks of the inner loop, then of the query pass
    new = adapt(model, params, x, y, nn.functional.cross_entropy, steps, lr, names=names, buffers=buffers,
                checkpoint=checkpoint)
    loss = nn.functional.cross_entropy(torch.func.functional_call(model, {**buffers, **new}, (qx,)), qy)
    wrt = list(params.values()) + (list(lr.values()) if isinstance(lr, dict) else [])
    return loss.detach(), torch.autograd.grad(loss, wrt), buffers


CASES = {
    "maml": ({}, None, "train"),
    "dropout": ({"dropout": 0.3}, None, "train"),
    "metasgd": ({}, None, "train"),  # learned per-parameter step sizes
    "anil": ({}, ["5.weight", "5.bias"], "train"),  # fixed body parameters enter every inner step
    "running-statistics": ({}, None, "eval"),  # BatchNorm reads the buffers each step updates
}


@pytest.mark.parametrize("checkpoint", [True, 2], ids=["all-but-last", "keep-2"])
@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_inner_loop_gives_the_same_meta_gradient_and_buffers(case, checkpoint):
    kwargs, names, mode = CASES[case]
    results = []
    for option in (False, checkpoint):
        model = getattr(_conv_net(**kwargs), mode)()
        lr = {n: torch.full_like(p, 0.2, requires_grad=True) for n, p in model.named_parameters()} if case == "metasgd" else 0.3
        results.append(_meta_step(model, option, lr, names))
    (loss, grads, buffers), (loss_c, grads_c, buffers_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=0)
    assert len(grads) == len(grads_c) > 0
    for a, g in zip(grads_c, grads):
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-13)
    for n in buffers:  # the recomputation does not update the running statistics again
        torch.testing.assert_close(buffers_c[n], buffers[n], rtol=0, atol=0)


def test_checkpointed_steps_match_finite_differences_of_the_query_loss():
    model = _conv_net()
    x, y, qx, qy = _data()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = inner_step(model, x, y, nn.functional.cross_entropy, list(base), {})

    def query_loss(params):
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (qx,)), qy)

    leaves = {n: t.clone().requires_grad_() for n, t in base.items()}
    grad = torch.autograd.grad(query_loss(checkpointed_steps(step, leaves, {}, 0.3, 2, list(base))), leaves["5.bias"])[0]
    eps, numeric = 1e-6, torch.zeros(3, dtype=torch.float64)
    with torch.enable_grad():  # the inner steps need gradients; only their values are used here
        for i in range(3):
            values = []
            for sign in (1, -1):
                shifted = dict(base)
                shifted["5.bias"] = base["5.bias"] + sign * eps * torch.eye(3, dtype=torch.float64)[i]
                params = shifted
                for _ in range(2):
                    params = {n: t.detach().requires_grad_() for n, t in params.items()}
                    params = step(params, {}, 0.3, False)
                values.append(query_loss(params).item())
            numeric[i] = (values[0] - values[1]) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


class _SavedBytes:
    """Bytes of the tensors autograd keeps for backward that are alive, and their peak."""

    def __init__(self) -> None:
        self.alive = self.peak = 0

    def pack(self, tensor):
        return _Held(tensor, self)


class _Held:
    def __init__(self, tensor, counter):
        self.tensor, self.counter, self.size = tensor, counter, tensor.numel() * tensor.element_size()
        counter.alive += self.size
        counter.peak = max(counter.peak, counter.alive)

    def __del__(self):
        self.counter.alive -= self.size


def test_checkpointing_keeps_one_inner_step_graph_alive():
    peaks = {}
    for steps in (2, 6):
        for checkpoint in (False, True):
            counter = _SavedBytes()
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda held: held.tensor):
                loss, _, _ = _meta_step(_conv_net(), checkpoint, 0.3, steps=steps)
            peaks[steps, checkpoint] = counter.peak
    assert peaks[6, False] > 2 * peaks[2, False]  # without: grows with the inner steps
    assert peaks[6, True] < 1.2 * peaks[2, True]  # with: one step's graph, whatever the steps
    assert peaks[6, True] * 3 < peaks[6, False]


def test_an_int_checkpoint_keeps_that_many_inner_step_graphs():
    peaks = {}
    for checkpoint in (True, 2, 3, 6, False):
        counter = _SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda held: held.tensor):
            _meta_step(_conv_net(), checkpoint, 0.3, steps=6)
        peaks[checkpoint] = counter.peak
    step_graph = peaks[3] - peaks[2]  # one more kept step
    assert step_graph > 0
    assert peaks[2] - peaks[True] == pytest.approx(step_graph, rel=0.05)
    assert peaks[6] == peaks[False]  # keeping every step is no checkpointing
    assert peaks[False] - peaks[3] == pytest.approx(3 * step_graph, rel=0.05)


@pytest.mark.parametrize(("checkpoint", "steps", "kept"), [(False, 5, 5), (True, 5, 1), (2, 5, 2), (7, 5, 5), (True, 0, 0)])
def test_kept_graphs(checkpoint, steps, kept):
    assert kept_graphs(checkpoint, steps) == kept


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None])
def test_an_invalid_checkpoint_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=f"inner_checkpoint must be .* got {bad!r}"):
        InnerLoop(loss="cross_entropy", steps=2, eval_steps=2, checkpoint=bad)


def test_a_second_backward_with_retain_graph_rebuilds_the_kept_last_step():
    grads = {}
    for checkpoint in (False, True):
        model = _conv_net()
        x, y, qx, qy = _data()
        new = adapt(model, dict(model.named_parameters()), x, y, nn.functional.cross_entropy, 3, 0.3,
                    buffers={n: b.clone() for n, b in model.named_buffers()}, checkpoint=checkpoint)
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, new, (qx,)), qy)
        loss.backward(retain_graph=True)
        loss.backward()
        grads[checkpoint] = [p.grad for p in model.parameters()]
    for a, g in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-13)


def test_a_second_derivative_through_the_checkpointed_steps_raises():
    model = _conv_net()
    x, y, qx, qy = _data()
    params = dict(model.named_parameters())
    new = adapt(model, params, x, y, nn.functional.cross_entropy, 2, 0.3, checkpoint=True)
    loss = nn.functional.cross_entropy(torch.func.functional_call(model, new, (qx,)), qy)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, list(params.values()), create_graph=True)


def test_checkpointed_steps_need_a_step():
    with pytest.raises(ValueError, match="steps >= 1, got 0"):
        checkpointed_steps(lambda p, b, lr, g: p, {"w": torch.zeros(1)}, {}, 0.1, 0, ["w"])
