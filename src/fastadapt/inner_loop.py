"""Inner-loop adaptation on parameter dicts, for people who write their own loops.

``adapt`` runs K steps of gradient descent on a task's support loss and returns
new parameters; the module itself is never modified or cloned. The returned
parameters are differentiable w.r.t. the initial ones (second order, as in
MAML) unless ``first_order=True``, in which case each step's gradient is
treated as a constant (first-order MAML: the outer gradient is the query-loss
gradient at the adapted parameters).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> params = dict(model.named_parameters())
    >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    >>> new = adapt(model, params, x, y, nn.functional.cross_entropy, steps=2, lr=0.1)
    >>> sorted(new)
    ['bias', 'weight']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fastadapt.compact_activations import compact_activations
from fastadapt.double_backward import explicit_double_backward, load_kernels
from fastadapt.inner_checkpoint import Params, StepFn, checkpointed_steps
from fastadapt.runtime import check_precision, compute_precision, resolve_precision
from fastadapt.task_parallel import check_workers, map_shares

LossFn = Callable[[Tensor, Tensor], Tensor]


def tensor_aliases(model: nn.Module) -> dict[str, str]:
    """The further names of tensors ``model`` registers more than once (tied weights).

    Maps every such name to the name ``named_parameters()`` / ``named_buffers()`` report for
    the tensor (the first one met); empty for a model without tied tensors.
    """
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def forward(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor,
    aliases: Mapping[str, str] | None = None,
) -> Tensor:
    """``model(x)`` with ``params`` and ``buffers`` substituted (``torch.func.functional_call``).

    Buffers must be passed explicitly (copies, if the caller wants the module's own
    running statistics untouched): ``functional_call`` updates whatever buffers it is given.

    ``aliases`` (``tensor_aliases(model)``) is for callers that call the same model many
    times: the tied names get the tensor of the name they alias here, and ``functional_call``
    skips its own search of the module for tied tensors on every call (``tie_weights=False``),
    the same result. On the benchmarks' Conv-4 that search is ~75 of the ~140 µs
    ``functional_call`` adds to a forward (``benchmarks/functional_call_cost.py``).
    """
    state = {**buffers, **params}
    if aliases is None:
        return functional_call(model, state, (x,))
    state.update({alias: state[name] for alias, name in aliases.items() if name in state})
    return functional_call(model, state, (x,), tie_weights=False)


def query_forward(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, precision: str,
    *, channels_last: bool = False, compact: bool = False,
) -> Tensor:
    """``forward`` of the query examples, under ``fastadapt.runtime.compute_precision(precision)``.

    With ``"bfloat16"`` the query pass (most of a MAML step's FLOPs: its forward, and the
    backward that flows through it into the inner loop) runs in bfloat16 while the inner
    loop's own gradients stay in float32. Autocasting the inner loop as well is
    deliberately not offered: on the Omniglot MAML 5-way 1-shot configuration it put the
    meta-gradient 10 % off the float64 one, against 0.56 % for query-only
    (``benchmarks/precision.py``; ``tests/algorithms/test_gradient_based.py`` checks a bound).
    Outputs are returned in ``x``'s dtype.

    ``channels_last=True`` runs the pass on channels-last (NHWC) copies of the 4-d
    parameters (differentiable clones; the inner loop keeps the module's layout): oneDNN's
    convolutions then skip the layout reorders of their outputs and input gradients: on the
    Omniglot Conv-4 with bfloat16 query passes and two workers a first-order MAML step ran
    1.32x and a second-order one 1.14x faster (``benchmarks/ablation.py``). ``clone`` and not
    ``contiguous``: a kernel with one input channel is contiguous in both layouts, and only
    a clone gives it the NHWC strides that make the first convolution's output NHWC too.

    ``compact=True`` runs the pass under ``fastadapt.compact_activations.compact_activations()``
    (smaller saved activations; its backward is then differentiable once).
    """
    with compact_activations(compact and torch.is_grad_enabled()):
        return _query_forward(model, params, buffers, x, precision, channels_last)


def _query_forward(
    model: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor, precision: str,
    channels_last: bool,
) -> Tensor:
    if channels_last:
        params = {n: p.clone(memory_format=torch.channels_last) if p.dim() == 4 else p for n, p in params.items()}
    precision = resolve_precision(precision, x.device.type)
    if precision == "float32":
        return forward(model, params, buffers, x)
    with compute_precision(precision, x.device.type):
        out = forward(model, params, buffers, x)
    return out.to(x.dtype)


def check_vmap_options(
    batching: str, query_channels_last: bool, second_order_kernels: bool = False, checkpoint: bool | int = False
) -> None:
    """Raise for options ``"vmap"`` cannot run: ``query_channels_last`` (no memory-format clones
    under vmap), ``second_order_kernels`` and ``checkpoint`` (autograd functions without a vmap rule)."""
    options = (
        ("query_channels_last", query_channels_last), ("second_order_kernels", second_order_kernels),
        ("inner_checkpoint", checkpoint),
    )
    for name, value in options:
        if value and batching == "vmap":
            raise ValueError(f"{name} needs task_batching 'stream' or 'loop', got 'vmap'")


def select(params: Mapping[str, Tensor], pattern: str | None) -> list[str]:
    """Names of ``params`` matched by the regular expression ``pattern`` (all if ``None``).

    Raises if the pattern matches nothing, naming the available parameters.
    """
    if pattern is None:
        return list(params)
    names = [n for n in params if re.search(pattern, n)]
    if not names:
        raise ValueError(f"adapt pattern {pattern!r} matches no parameter; parameters are {list(params)}")
    return names


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    first_order: bool = False,
    names: list[str] | None = None,
    buffers: Mapping[str, Tensor] | None = None,
    second_order_kernels: bool = False,
    checkpoint: bool | int = False,
) -> Params:
    """Adapt ``params`` to one task by ``steps`` steps of gradient descent on the support loss.

    Args:
        model: the network (only its structure is used).
        params: initial parameters, keyed like ``model.named_parameters()``.
        support_x: ``(N, *example_shape)`` one task's support inputs.
        support_y: ``(N,)`` labels or ``(N, *target_shape)`` targets.
        loss_fn: ``loss_fn(outputs, support_y) -> scalar``.
        steps: number of gradient steps (0 returns ``params`` unchanged).
        lr: step size, a float or per-parameter tensors (Meta-SGD) keyed like ``params``.
        first_order: drop second-order terms (FOMAML).
        names: the parameters to adapt (default all); others stay fixed (ANIL).
        buffers: buffers for the forward pass (e.g. BatchNorm statistics); default none.
        second_order_kernels: when the steps are differentiable (second order), run the
            support passes under ``fastadapt.double_backward.explicit_double_backward()``:
            compiled convolution/BatchNorm functions with an explicit double backward
            (same derivatives, fewer and cheaper operations).
        checkpoint: when the steps are differentiable, keep fewer than ``steps`` steps' graphs
            alive: ``True`` holds what a one-step loop holds (the steps but the last are rebuilt
            in the backward, ``fastadapt.inner_checkpoint.checkpointed_steps``), an int ``k``
            keeps the last ``k`` steps' graphs and rebuilds the ``steps - k`` before them
            (``k >= steps``: nothing rebuilt). With any rebuilt step the returned parameters are
            differentiable once: a backward through them with ``create_graph=True`` raises.

    Returns:
        The adapted parameters (all of ``params``, the non-adapted ones unchanged).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = dict(params)
    names = list(params) if names is None else names
    buffers = {} if buffers is None else buffers
    create_graph = not first_order and torch.is_grad_enabled()
    step = inner_step(model, support_x, support_y, loss_fn, names, tensor_aliases(model), second_order_kernels)
    with torch.enable_grad():
        kept = kept_graphs(checkpoint, steps) if create_graph else steps
        if kept < steps:  # the checkpointed run rebuilds steps - kept steps and keeps its last one's graph
            params = checkpointed_steps(step, params, buffers, lr, steps - kept + 1, names)
            kept -= 1
        for _ in range(kept):
            params = step(params, buffers, lr, create_graph)
    return params


def check_checkpoint(checkpoint: bool | int) -> None:
    """Raise unless ``checkpoint`` is a bool or an int >= 1 (``adapt``'s ``checkpoint``)."""
    if not isinstance(checkpoint, int) or (not isinstance(checkpoint, bool) and checkpoint < 1):
        raise ValueError(f"inner_checkpoint must be True, False or an int >= 1 (step graphs kept), got {checkpoint!r}")


def kept_graphs(checkpoint: bool | int, steps: int) -> int:
    """How many of ``steps`` differentiable inner steps keep their graph under ``checkpoint``
    (``adapt``): all for ``False``, one for ``True``, ``min(checkpoint, steps)`` for an int."""
    check_checkpoint(checkpoint)
    if checkpoint is False:
        return steps
    return min(int(checkpoint), steps)


def inner_step(
    model: nn.Module, support_x: Tensor, support_y: Tensor, loss_fn: LossFn, names: list[str],
    aliases: Mapping[str, str], second_order_kernels: bool = False,
) -> StepFn:
    """One step of ``adapt`` as ``step(params, buffers, lr, create_graph) -> params`` (the entries
    ``names`` moved by ``-lr * grad`` of the support loss; ``buffers`` updated by the forward pass;
    ``second_order_kernels`` applies to the calls with ``create_graph=True``)."""

    def step(params: Params, buffers: Mapping[str, Tensor], lr: float | Mapping[str, Tensor], create_graph: bool) -> Params:
        with explicit_double_backward(second_order_kernels and create_graph):
            out = forward(model, params, buffers, support_x, aliases)
        grads = torch.autograd.grad(loss_fn(out, support_y), [params[n] for n in names], create_graph=create_graph)
        new = dict(params)
        for name, grad in zip(names, grads):
            new[name] = params[name] - (lr[name] if isinstance(lr, Mapping) else lr) * grad
        return new

    return step


def _vmap_task_losses(
    model: nn.Module, params: Params, buffers: Mapping[str, Tensor], batch_tensors: tuple[Tensor, ...],
    loss_fn: LossFn, steps: int, lr: float | Mapping[str, Tensor], first_order: bool, names: list[str],
    precision: str,
) -> tuple[Tensor, Tensor]:
    def task(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        for _ in range(steps):
            fixed = dict(params)

            def support_loss(adapted: Params) -> Tensor:
                return loss_fn(forward(model, {**fixed, **adapted}, buffers, sx), sy)

            grads = torch.func.grad(support_loss)({n: params[n] for n in names})
            params = dict(params)
            for n in names:
                g = grads[n].detach() if first_order else grads[n]
                params[n] = params[n] - (lr[n] if isinstance(lr, Mapping) else lr) * g
        out = query_forward(model, params, buffers, qx, precision)
        return loss_fn(out, qy), out

    return torch.func.vmap(task, in_dims=(None, 0, 0, 0, 0))(params, *batch_tensors)


def meta_batch_loss(
    model: nn.Module,
    params: Params,
    buffers: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    first_order: bool = False,
    names: list[str] | None = None,
    batching: str = "loop",
    precision: str = "float32",
    query_channels_last: bool = False,
    second_order_kernels: bool = False,
    checkpoint: bool | int = False,
) -> tuple[Tensor, Tensor]:
    """Mean query loss after adapting to each task of a meta-batch, and the query outputs.

    Args:
        support_x, support_y: ``(B, N_s, ...)``, ``(B, N_s, ...)``.
        query_x, query_y: ``(B, N_q, ...)``, ``(B, N_q, ...)``.
        batching: ``"loop"`` over tasks or ``"vmap"`` (``torch.func.vmap`` with ``torch.func.grad``).
        precision: of the query forward passes (see ``query_forward``); the inner loop
            always runs in the parameters' precision.
        query_channels_last: the query passes on NHWC copies of the parameters
            (``query_forward``'s ``channels_last``; not with ``"vmap"``).
        second_order_kernels, checkpoint: as in ``adapt`` (not with ``"vmap"``).
        The other arguments are those of ``adapt``.

    Returns:
        The scalar mean query loss and the query outputs ``(B, N_q, ...)``.
    """
    names = list(params) if names is None else names
    check_vmap_options(batching, query_channels_last, second_order_kernels, checkpoint)
    if batching == "vmap":
        losses, outputs = _vmap_task_losses(
            model, params, buffers, (support_x, support_y, query_x, query_y), loss_fn, steps, lr, first_order, names,
            precision,
        )
        return losses.mean(), outputs
    if batching != "loop":
        raise ValueError(f"batching must be 'loop' or 'vmap', got {batching!r}")
    losses_list, outputs_list = [], []
    for t in range(support_x.shape[0]):
        adapted = adapt(
            model, params, support_x[t], support_y[t], loss_fn, steps, lr, first_order=first_order, names=names,
            buffers=buffers, second_order_kernels=second_order_kernels, checkpoint=checkpoint,
        )
        out = query_forward(model, adapted, buffers, query_x[t], precision, channels_last=query_channels_last)
        losses_list.append(loss_fn(out, query_y[t]))
        outputs_list.append(out)
    return torch.stack(losses_list).mean(), torch.stack(outputs_list)


def meta_parameters(params: Mapping[str, Tensor], lr: float | Mapping[str, Tensor]) -> list[Tensor]:
    """The tensors a meta-gradient is taken with respect to: ``params`` and learned step sizes
    (Meta-SGD) that require grad."""
    tensors = list(params.values()) + (list(lr.values()) if isinstance(lr, Mapping) else [])
    return [t for t in tensors if t.requires_grad]


def streamed_meta_loss(
    model: nn.Module,
    params: Params,
    buffers: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    first_order: bool = False,
    names: list[str] | None = None,
    precision: str = "float32",
    workers: int = 1,
    query_channels_last: bool = False,
    second_order_kernels: bool = False,
    checkpoint: bool | int = False,
    query_compact: bool = False,
) -> tuple[Tensor, Tensor]:
    """``meta_batch_loss`` with each task's meta-gradient taken as soon as its query loss exists.

    Peak memory is one task's graph per worker instead of the whole meta-batch's: each
    task's query loss is differentiated right away (``torch.autograd.grad`` w.r.t.
    ``meta_parameters(params, lr)``) and its graph freed. The returned loss is a
    surrogate ``L + sum_w <w - stop_grad(w), g_w>`` whose value is the mean query loss
    ``L`` and whose gradient w.r.t. every meta-parameter ``w`` is the summed ``g_w``,
    i.e. exactly the meta-gradient of ``meta_batch_loss`` (the same numbers up to the
    order of summation). Any scalar function of it back-propagates correctly to the
    meta-parameters; it carries no graph to the inputs or higher derivatives (use
    ``meta_batch_loss`` for those). Under ``torch.no_grad()`` it is the plain mean loss.

    Args:
        workers: threads the tasks are split over (``fastadapt.task_parallel.map_shares``).
        query_compact: the query passes with compact saved activations (``query_forward``'s
            ``compact``): each task's graph is differentiated once, right away, so that is all it needs.
        The other arguments and the shapes are those of ``meta_batch_loss``.

    Returns:
        The scalar (surrogate) mean query loss and the detached query outputs ``(B, N_q, ...)``.
    """
    wrt = meta_parameters(params, lr) if torch.is_grad_enabled() else []
    tasks = support_x.shape[0]

    def share_fn(replica: nn.Module, share: range) -> tuple[list[Tensor | None], list[Tensor], list[Tensor]]:
        local = {n: b.clone() for n, b in buffers.items()}  # per thread: BatchNorm updates them in place
        total: list[Tensor | None] = [None] * len(wrt)
        losses, outputs = [], []
        for t in share:
            adapted = adapt(
                replica, params, support_x[t], support_y[t], loss_fn, steps, lr, first_order=first_order, names=names,
                buffers=local, second_order_kernels=second_order_kernels, checkpoint=checkpoint,
            )
            out = query_forward(
                replica, adapted, local, query_x[t], precision, channels_last=query_channels_last, compact=query_compact
            )
            loss = loss_fn(out, query_y[t])
            if wrt:
                grads = torch.autograd.grad(loss / tasks, wrt, allow_unused=True)
                total = [g if s is None else (s if g is None else s + g) for s, g in zip(total, grads)]
            losses.append(loss.detach())
            outputs.append(out.detach())
        return total, losses, outputs

    results = map_shares(model, tasks, workers, share_fn)
    loss = torch.stack([v for _, losses, _ in results for v in losses]).mean()
    outputs = torch.stack([o for _, _, outs in results for o in outs])
    for w, *parts in zip(wrt, *(total for total, _, _ in results)):
        present = [g for g in parts if g is not None]
        if present:
            loss = loss + ((w - w.detach()) * torch.stack(present).sum(0)).sum()
    return loss, outputs


def adapted_predictions(
    model: nn.Module,
    params: Params,
    buffers: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    names: list[str] | None = None,
    precision: str = "float32",
    workers: int = 1,
    query_channels_last: bool = False,
) -> Tensor:
    """Query outputs ``(B, N_q, ...)`` after adapting to each task; works under ``torch.no_grad()``.

    ``workers`` threads share the tasks (``fastadapt.task_parallel.map_shares``).
    """

    def share_fn(replica: nn.Module, share: range) -> list[Tensor]:
        local = {n: b.clone() for n, b in buffers.items()}
        outputs = []
        for t in share:
            adapted = adapt(
                replica, params, support_x[t], support_y[t], loss_fn, steps, lr, first_order=True, names=names,
                buffers=local,
            )
            with torch.no_grad():
                outputs.append(
                    query_forward(replica, adapted, local, query_x[t], precision, channels_last=query_channels_last)
                )
        return outputs

    return torch.stack([o for outs in map_shares(model, support_x.shape[0], workers, share_fn) for o in outs])


def has_affine_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` contains an ``nn.BatchNorm*`` layer with a learnable scale/offset."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in module.modules())


def buffer_copies(module: nn.Module) -> Params:
    """Copies of ``module``'s buffers: functional calls given these never touch the module's own."""
    return {n: b.clone() for n, b in module.named_buffers()}


BATCHINGS = ("stream", "loop", "vmap")
LOSSES: dict[str, LossFn] = {"cross_entropy": torch.nn.functional.cross_entropy, "mse": torch.nn.functional.mse_loss}


def loss_function(name: str) -> LossFn:
    """The inner/outer loss registered as ``name``; raises naming the valid choices."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


@dataclass(frozen=True)
class InnerLoop:
    """The inner-loop settings shared by the gradient-based learners, and their two uses.

    Args:
        loss: ``"cross_entropy"`` or ``"mse"``.
        steps: inner steps in meta-training; ``eval_steps``: in prediction.
        first_order: drop second-order terms.
        names: parameters adapted (``None``: all).
        batching: ``"stream"`` (tasks in a loop, each task's meta-gradient taken at once:
            ``streamed_meta_loss``), ``"loop"`` (tasks in a loop, one graph for the meta-batch:
            ``meta_batch_loss``) or ``"vmap"`` (``torch.func.vmap`` over tasks).
        precision: of the query forward passes, ``"float32"``, ``"bfloat16"`` or ``"auto"`` (``query_forward``).
        workers: threads the tasks are split over (``"stream"`` and ``predict``;
            ``fastadapt.task_parallel``).
        query_channels_last: the query passes on NHWC copies of the parameters (``query_forward``).
        second_order_kernels: the second-order support passes under
            ``fastadapt.double_backward.explicit_double_backward()`` (``adapt``); compiled on
            construction, raising if that is impossible here.
        checkpoint: second-order inner steps rebuilt in the backward instead of kept: ``True``
            all but the last, an int ``k`` all but the last ``k`` (``adapt``; not with ``"vmap"``).
        query_compact: the query passes with compact saved activations (``streamed_meta_loss``;
            ``"stream"`` only); needs the C++ extension, compiled on construction.
    """

    loss: str
    steps: int
    eval_steps: int
    first_order: bool = False
    names: list[str] | None = None
    batching: str = "stream"
    precision: str = "float32"
    workers: int = 1
    query_channels_last: bool = False
    second_order_kernels: bool = False
    checkpoint: bool | int = False
    query_compact: bool = False

    def __post_init__(self) -> None:
        loss_function(self.loss)
        if self.steps < 0 or self.eval_steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps} and {self.eval_steps}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"task_batching must be one of {BATCHINGS}, got {self.batching!r}")
        check_precision(self.precision)
        check_workers(self.workers)
        check_checkpoint(self.checkpoint)
        check_vmap_options(self.batching, self.query_channels_last, self.second_order_kernels, self.checkpoint)
        if self.workers > 1 and self.batching != "stream":
            raise ValueError(f"task_workers={self.workers} needs task_batching='stream', got {self.batching!r}")
        if self.query_compact and self.batching != "stream":
            raise ValueError(
                f"query_compact_activations needs task_batching='stream' (its query graphs are differentiated "
                f"once), got {self.batching!r}"
            )
        if self.second_order_kernels or self.query_compact:
            load_kernels()

    @classmethod
    def for_backbone(
        cls, backbone: nn.Module, *, loss: str, steps: int, eval_steps: int | None, first_order: bool,
        adapt: str | None, batching: str, precision: str = "float32", workers: int = 1,
        query_channels_last: bool = False, second_order_kernels: bool = False, checkpoint: bool | int = False,
        query_compact: bool = False,
    ) -> InnerLoop:
        """Settings checked against ``backbone``: ``adapt`` (a name pattern) selects the adapted
        parameters, ``eval_steps=None`` means ``steps``, and ``vmap`` is refused where torch <= 2.13
        gets second-order meta-gradients through an affine ``nn.BatchNorm`` wrong (functorch#534)."""
        names = select(dict(backbone.named_parameters()), adapt)
        eval_steps = steps if eval_steps is None else eval_steps
        loop = cls(
            loss=loss, steps=steps, eval_steps=eval_steps, first_order=first_order, names=names, batching=batching,
            precision=precision, workers=workers, query_channels_last=query_channels_last,
            second_order_kernels=second_order_kernels, checkpoint=checkpoint, query_compact=query_compact,
        )
        if batching == "vmap" and not first_order and has_affine_batch_norm(backbone):
            raise ValueError(
                "task_batching='vmap' with second-order meta-gradients through an affine nn.BatchNorm is "
                "wrong in torch <= 2.13 (functorch#534); use task_batching='stream' or 'loop', first_order=True, or "
                "a backbone without affine BatchNorm"
            )
        return loop

    def meta_loss(self, backbone: nn.Module, batch: Any, lr: float | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Mean query loss and query outputs of an ``EpisodeBatch`` (``streamed_meta_loss`` for
        ``"stream"``, else ``meta_batch_loss``)."""
        args = (
            backbone, dict(backbone.named_parameters()), buffer_copies(backbone),
            batch.support_x, batch.support_y, batch.query_x, batch.query_y, loss_function(self.loss), self.steps, lr,
        )
        options = {
            "first_order": self.first_order, "names": self.names, "precision": self.precision,
            "query_channels_last": self.query_channels_last, "second_order_kernels": self.second_order_kernels,
            "checkpoint": self.checkpoint,
        }
        if self.batching == "stream":
            return streamed_meta_loss(*args, workers=self.workers, query_compact=self.query_compact, **options)
        return meta_batch_loss(*args, batching=self.batching, **options)

    def predict(
        self, backbone: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, lr: float | Mapping[str, Tensor]
    ) -> Tensor:
        """Query outputs after ``eval_steps`` of adaptation (see ``adapted_predictions``)."""
        return adapted_predictions(
            backbone, dict(backbone.named_parameters()), buffer_copies(backbone), support_x, support_y,
            query_x, loss_function(self.loss), self.eval_steps, lr, names=self.names, precision=self.precision,
            workers=self.workers, query_channels_last=self.query_channels_last,
        )
