"""Second-order inner loops recomputed in the backward: the memory of a one-step loop.

Second-order MAML keeps the graph of every inner step (its forward pass and the backward
pass taken with ``create_graph=True``) alive until the outer backward: a task's peak
memory grows linearly with the number of inner steps. ``checkpointed_steps`` runs the first
K-1 steps without a graph, keeping only each step's starting parameters (plus a copy of the
buffers and the random-number state, so BatchNorm running statistics and dropout masks
are those of the first pass), runs the last step with its graph (the backward starts there),
and in the backward rebuilds the others one at a time with their graph and back-propagates
through each alone: peak memory is about one step's graph plus the query pass (what a one-step
loop holds) plus K parameter sets, the price K-1 steps' forward and first backward run twice
(MAML 20-way 1-shot, 5 steps: 33.0 -> 11.0 MB of saved tensors at 1.18x the step time,
``benchmarks/inner_checkpoint.py``). This is
recomputation at the granularity of inner steps (Chen, Xu, Zhang & Guestrin 2016,
arXiv:1604.06174, applied to the unrolled inner loop; Griewank & Walther 2000's
checkpointing with every step a checkpoint). The meta-gradient is the same as without
it up to the order of floating-point sums.

The outer derivative is taken once: the returned parameters are differentiable with respect
to the initial parameters and learned step sizes (a meta-gradient), not twice: a backward
through them with ``create_graph=True`` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Params = dict[str, Tensor]
StepFn = Callable[[Params, Mapping[str, Tensor], float | Mapping[str, Tensor], bool], Params]
"""``step(params, buffers, lr, create_graph) -> params``: one inner step (the adapted entries replaced)."""


@dataclass(frozen=True)
class _Run:
    """What the autograd function needs besides its tensor inputs."""

    step: StepFn
    steps: int
    names: list[str]  # adapted parameters, in the order of the function's outputs
    param_names: list[str]  # every parameter, in the order of the function's first inputs
    lr_names: list[str]  # learned step sizes, the inputs after the parameters ([] for a float lr)
    lr: float | None
    buffers: Mapping[str, Tensor]


@dataclass(frozen=True)
class _StepStart:
    """The state one inner step starts from: adapted parameters, buffers, random-number state."""

    adapted: Params
    buffers: Params
    rng: Tensor
    device_rng: Tensor | None


def _device(tensors: tuple[Tensor, ...]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def _snapshot(adapted: Params, buffers: Mapping[str, Tensor], device: torch.device) -> _StepStart:
    device_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return _StepStart(adapted, {n: b.clone() for n, b in buffers.items()}, torch.get_rng_state(), device_rng)


def _split(run: _Run, inputs: tuple[Tensor, ...]) -> tuple[Params, Params]:
    """The function's inputs as detached parameters and learned step sizes, by name."""
    count = len(run.param_names)
    params = {n: t.detach() for n, t in zip(run.param_names, inputs[:count])}
    return params, {n: t.detach() for n, t in zip(run.lr_names, inputs[count:])}


def _step_sizes(run: _Run, lr_values: Params) -> float | Params:
    return run.lr if run.lr is not None else lr_values


def _wanted(run: _Run, needs: tuple[bool, ...]) -> tuple[list[str], list[str]]:
    """The non-adapted parameters and learned step sizes whose gradient the caller needs."""
    count = len(run.param_names)
    fixed = [n for i, n in enumerate(run.param_names) if n not in run.names and needs[i]]
    return fixed, [n for i, n in enumerate(run.lr_names) if needs[count + i]]


def _graph_step(
    run: _Run, adapted: Params, params: Params, lr_values: Params, fixed: list[str], learned: list[str],
    buffers: Mapping[str, Tensor],
) -> tuple[list[Tensor], list[Tensor]]:
    """One step with its graph (``create_graph=True``) from fresh leaves: the leaves (adapted
    parameters, then ``fixed``, then ``learned``) and the step's new adapted values."""
    leaves = {n: t.detach().requires_grad_() for n, t in adapted.items()}
    fixed_leaves = {n: params[n].detach().requires_grad_() for n in fixed}
    lr_leaves = {n: lr_values[n].detach().requires_grad_() for n in learned}
    new = run.step({**params, **fixed_leaves, **leaves}, buffers, _step_sizes(run, {**lr_values, **lr_leaves}), True)
    return [*leaves.values(), *fixed_leaves.values(), *lr_leaves.values()], [new[n] for n in run.names]


class _CheckpointedSteps(torch.autograd.Function):
    """K inner steps; the backward rebuilds steps K-2 ... 0 one at a time. The last step is run
    with its graph in the forward and that graph kept (the backward's first step: rebuilding it
    would cost a step and save nothing, since the backward holds one step's graph anyway)."""

    @staticmethod
    def forward(ctx: Any, run: _Run, *inputs: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        params, lr_values = _split(run, inputs)
        fixed, learned = _wanted(run, ctx.needs_input_grad[1:])
        device, starts = _device(inputs), []
        adapted = {n: params[n] for n in run.names}
        with torch.enable_grad():
            for step in range(run.steps):
                starts.append(_snapshot(adapted, run.buffers, device))
                if step == run.steps - 1:
                    ctx.kept = _graph_step(run, adapted, params, lr_values, fixed, learned, run.buffers)
                    adapted = {n: t.detach() for n, t in zip(run.names, ctx.kept[1])}
                    break
                leaves = {n: t.detach().requires_grad_() for n, t in adapted.items()}
                new = run.step({**params, **leaves}, run.buffers, _step_sizes(run, lr_values), False)
                adapted = {n: new[n].detach() for n in run.names}
        ctx.run, ctx.starts, ctx.device = run, starts, device
        ctx.save_for_backward(*inputs)
        return tuple(adapted[n] for n in run.names)

    @staticmethod
    def backward(ctx: Any, *grad_adapted: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # the caller asked for create_graph=True
            raise RuntimeError(
                "inner_checkpoint: the meta-gradient through checkpointed inner steps is differentiable once; "
                "create_graph=True through it is not supported (use inner_checkpoint=False)"
            )
        run: _Run = ctx.run
        count, adapted_count = len(run.param_names), len(run.names)
        needs = ctx.needs_input_grad[1:]
        fixed, learned = _wanted(run, needs)
        params, lr_values = _split(run, ctx.saved_tensors)
        kept, ctx.kept = ctx.kept, None  # a second backward (retain_graph) rebuilds the last step too
        upstream = list(grad_adapted)
        totals: dict[str, Tensor] = {}
        for step in reversed(range(run.steps)):
            start = ctx.starts[step]
            if step == run.steps - 1 and kept is not None:
                wrt, outputs = kept
                grads = torch.autograd.grad(outputs, wrt, upstream, allow_unused=True)
            else:
                devices = [ctx.device] if start.device_rng is not None else []
                with torch.enable_grad(), torch.random.fork_rng(devices=devices):
                    torch.set_rng_state(start.rng)
                    if start.device_rng is not None:
                        torch.cuda.set_rng_state(start.device_rng, ctx.device)
                    buffers = {n: b.clone() for n, b in start.buffers.items()}
                    wrt, outputs = _graph_step(run, start.adapted, params, lr_values, fixed, learned, buffers)
                    grads = torch.autograd.grad(outputs, wrt, upstream, allow_unused=True)
            upstream = [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, wrt[:adapted_count])]
            for name, grad in zip([*fixed, *learned], grads[adapted_count:]):
                if grad is not None:
                    totals[name] = grad if name not in totals else totals[name] + grad
        by_name = dict(zip(run.names, upstream))
        param_grads = [by_name.get(n, totals.get(n)) if needs[i] else None for i, n in enumerate(run.param_names)]
        lr_grads = [totals.get(n) if needs[count + i] else None for i, n in enumerate(run.lr_names)]
        return (None, *param_grads, *lr_grads)


def checkpointed_steps(
    step: StepFn,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    lr: float | Mapping[str, Tensor],
    steps: int,
    names: list[str],
) -> Params:
    """``steps`` inner steps from ``params``, differentiable (once) with one step's graph alive at a time.

    Args:
        step: one inner step, ``step(params, buffers, lr, create_graph) -> params`` (the entries
            ``names`` replaced); ``buffers`` are updated in place by the forward pass, as in
            ``fastadapt.inner_loop.adapt``.
        params: initial parameters (all of the model's: the non-adapted ones enter every step).
        buffers: the forward passes' buffers; updated by the first pass only (the recomputation
            runs on copies of each step's starting buffers).
        lr: a float or per-parameter step sizes (learned, e.g. Meta-SGD: their gradient is returned too).
        steps: >= 1.
        names: the adapted parameters.

    Returns:
        All of ``params``, the entries ``names`` replaced by their values after ``steps`` steps.
    """
    if steps < 1:
        raise ValueError(f"checkpointed_steps needs steps >= 1, got {steps}")
    param_names = list(params)
    if isinstance(lr, Mapping):
        run = _Run(step, steps, list(names), param_names, list(lr), None, buffers)
        inputs = [params[n] for n in param_names] + [lr[n] for n in lr]
    else:
        run = _Run(step, steps, list(names), param_names, [], float(lr), buffers)
        inputs = [params[n] for n in param_names]
    adapted = _CheckpointedSteps.apply(run, *inputs)
    return {**params, **dict(zip(names, adapted))}
