"""Maths of the gradient-based learners: finite differences in float64, loop vs vmap, BN buffers."""

import dataclasses

import pytest
import torch
from torch import nn

from fastadapt.algorithms import ANIL, MAML, MetaSGD, Reptile
from fastadapt import inner_loop
from fastadapt.double_backward import kernels_available
from fastadapt.inner_loop import adapt, forward, meta_batch_loss, tensor_aliases
from fastadapt.models import create_model
from fastadapt.tasks import EpisodeBatch, TaskSpec

SPEC = TaskSpec(ways=3, shots=2, queries=2)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", in_features=4, hidden=(5,), out_features=3).double()


class TiedMLP(nn.Module):
    """Two hidden layers sharing one weight matrix, and a buffer registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        double = {"dtype": torch.float64}
        self.first, self.second, self.head = nn.Linear(4, 4, **double), nn.Linear(4, 4, **double), nn.Linear(4, 3, **double)
        self.second.weight = self.first.weight
        self.register_buffer("scale", torch.full((4,), 0.5, **double))
        self.head.register_buffer("scale", self.scale)  # (``.double()`` would untie buffers: build in float64)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))) * self.head.scale)


def batch(tasks: int = 2, dtype=torch.float64, image: bool = False) -> EpisodeBatch:
    g = torch.Generator().manual_seed(1)
    shape = (1, 16, 16) if image else (4,)
    labels = lambda n: torch.arange(SPEC.ways).repeat_interleave(n).repeat(tasks, 1)
    return EpisodeBatch(
        torch.randn(tasks, 6, *shape, generator=g, dtype=dtype), labels(SPEC.shots),
        torch.randn(tasks, 6, *shape, generator=g, dtype=dtype), labels(SPEC.queries), SPEC,
    )


def finite_difference(fn, tensors, eps=1e-6):
    grads = []
    for t in tensors:
        g = torch.zeros_like(t)
        flat = t.data.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = fn().item()
            flat[i] = old - eps
            minus = fn().item()
            flat[i] = old
            g.view(-1)[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_second_order_meta_gradient_matches_finite_differences(steps):
    model = MAML(mlp(), inner_lr=0.5, inner_steps=steps)
    b = batch()
    params = list(model.parameters())
    analytic = torch.autograd.grad(model.meta_loss(b).loss, params)
    numeric = finite_difference(lambda: model.meta_loss(b).loss, params)
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", [1, 3])
def test_fomaml_equals_gradient_through_detached_copy(steps):
    backbone = mlp()
    model = MAML(backbone, inner_lr=0.5, inner_steps=steps, first_order=True)
    b = batch(tasks=1)
    fo = torch.autograd.grad(model.meta_loss(b).loss, list(backbone.parameters()))
    adapted = adapt(backbone, dict(backbone.named_parameters()), b.support_x[0], b.support_y[0],
                    nn.functional.cross_entropy, steps, 0.5, first_order=True)
    detached = {n: p.detach().requires_grad_() for n, p in adapted.items()}
    loss = nn.functional.cross_entropy(forward(backbone, detached, {}, b.query_x[0]), b.query_y[0])
    expected = torch.autograd.grad(loss, list(detached.values()))
    for a, e in zip(fo, expected):
        torch.testing.assert_close(a, e)
    second = torch.autograd.grad(MAML(backbone, inner_lr=0.5, inner_steps=steps).meta_loss(b).loss, list(backbone.parameters()))
    assert any((s - f).abs().max() > 1e-6 for s, f in zip(second, fo))  # the dropped terms are not zero


def test_metasgd_learning_rate_gradient_matches_finite_differences():
    model = MetaSGD(mlp(), inner_lr=0.3, inner_steps=2).double()
    b = batch()
    lrs = list(model.lrs.parameters())
    analytic = torch.autograd.grad(model.meta_loss(b).loss, lrs)
    numeric = finite_difference(lambda: model.meta_loss(b).loss, lrs)
    for a, n in zip(analytic, numeric):
        torch.testing.assert_close(a, n, rtol=1e-5, atol=1e-7)
    assert set(model.state_dict()) >= {"lrs.net__0__weight", "lrs.net__2__bias"}


def test_anil_adapts_only_the_head():
    backbone = mlp()
    model = ANIL(backbone, head=r"^net\.2\.", inner_lr=0.5)
    assert model.inner.names == ["net.2.weight", "net.2.bias"]
    b = batch(tasks=1)
    adapted = adapt(backbone, dict(backbone.named_parameters()), b.support_x[0], b.support_y[0],
                    nn.functional.cross_entropy, 1, 0.5, names=model.inner.names)
    assert adapted["net.0.weight"] is backbone.net[0].weight
    assert not torch.equal(adapted["net.2.weight"], backbone.net[2].weight)
    model.meta_loss(b).loss.backward()
    assert backbone.net[0].weight.grad.abs().sum() > 0  # the body is meta-learned by the outer loop
    with pytest.raises(ValueError, match="matches no parameter"):
        ANIL(mlp(), head="^classifier")


def test_reptile_outer_direction_is_params_minus_adapted():
    backbone = mlp()
    model = Reptile(backbone, inner_lr=0.1, inner_steps=3, inner_batch=3, inner_optimizer="sgd")
    b = batch()
    grads = torch.autograd.grad(model.meta_loss(b).loss, list(backbone.parameters()))
    adapted = [model.train_task(b.support_x[t], b.support_y[t], 3) for t in range(2)]
    for (name, p), g in zip(backbone.named_parameters(), grads):
        expected = sum(p.detach() - a[name] for a in adapted) / 2
        torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("make_backbone", [mlp, TiedMLP], ids=["mlp", "tied"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_reptile_inner_loop_is_torch_optim_on_shot_major_minibatches(optimizer, make_backbone):
    """train_task's foreach update equals torch.optim (Adam with betas (0, 0.999), eps 1e-8;
    plain SGD) stepping a deep copy on the same minibatches, in float64; with tied weights too
    (the forward passes take ``tensor_aliases`` instead of functional_call's own search)."""
    import copy

    backbone = make_backbone()
    model = Reptile(backbone, inner_lr=0.05, inner_steps=4, inner_batch=4, inner_optimizer=optimizer)
    b = batch()
    x, y = b.support_x[0], b.support_y[0]
    adapted = model.train_task(x, y, 4)
    learner = copy.deepcopy(backbone)
    make = {"adam": lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.0, 0.999), eps=1e-8), "sgd": lambda p: torch.optim.SGD(p, lr=0.05)}
    opt = make[optimizer](learner.parameters())
    order = torch.arange(6).view(3, 2).t().flatten()  # shot-major: every minibatch holds each class
    for step in range(4):
        idx = order[(step * 4) % 6 :][:4]
        opt.zero_grad()
        nn.functional.cross_entropy(learner(x[idx]), y[idx]).backward()
        opt.step()
    for name, p in learner.named_parameters():
        torch.testing.assert_close(adapted[name], p.detach(), rtol=1e-12, atol=1e-14)
        assert not adapted[name].requires_grad
    assert all(p.grad is None for p in backbone.parameters())  # the backbone itself is untouched


def test_tensor_aliases_name_every_further_registration_of_a_tensor():
    assert tensor_aliases(TiedMLP()) == {"second.weight": "first.weight", "head.scale": "scale"}
    assert tensor_aliases(mlp()) == {}


@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_with_tied_weights_is_functional_call_with_tie_weights(first_order):
    """``adapt`` passes ``tensor_aliases`` to ``forward`` (``tie_weights=False``): same adapted
    parameters and meta-gradient as a loop that lets ``functional_call`` tie the weights."""
    model, b = TiedMLP(), batch()
    x, y, qx, qy = b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0]
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    buffers = {n: t.clone() for n, t in model.named_buffers()}
    adapted = adapt(model, params, x, y, nn.functional.cross_entropy, 2, 0.3, first_order=first_order, buffers=buffers)
    reference = dict(params)
    for _ in range(2):
        out = torch.func.functional_call(model, {**buffers, **reference}, (x,))  # tie_weights=True
        grads = torch.autograd.grad(nn.functional.cross_entropy(out, y), list(reference.values()), create_graph=not first_order)
        reference = {n: p - 0.3 * (g.detach() if first_order else g) for (n, p), g in zip(reference.items(), grads)}
    for name in params:
        torch.testing.assert_close(adapted[name], reference[name], rtol=1e-12, atol=1e-14)
    meta = [torch.autograd.grad(nn.functional.cross_entropy(forward(model, p, buffers, qx), qy), list(params.values()))
            for p in (adapted, reference)]
    for got, want in zip(*meta):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # The shared weight really is substituted in both layers.
    changed = {**params, "first.weight": torch.zeros(4, 4, dtype=torch.float64)}
    zero_second = forward(model, changed, buffers, x, tensor_aliases(model))
    torch.testing.assert_close(zero_second, torch.func.functional_call(model, {**buffers, **changed}, (x,)))


@pytest.mark.parametrize("first_order", [False, True])
def test_loop_and_vmap_give_the_same_meta_gradient(first_order):
    b = batch(image=True)
    grads = {}
    for batching in ("loop", "vmap"):
        torch.manual_seed(0)
        backbone = create_model("conv4", hidden=4, bn="none", image_size=16, out_features=3).double()
        model = MAML(backbone, inner_lr=0.3, inner_steps=2, first_order=first_order, task_batching=batching)
        out = model.meta_loss(b)
        grads[batching] = torch.autograd.grad(out.loss, list(backbone.parameters())), out.logits
    for a, v in zip(*(grads[k][0] for k in ("loop", "vmap"))):
        torch.testing.assert_close(a, v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(grads["loop"][1], grads["vmap"][1])


def test_vmap_refuses_second_order_through_affine_batchnorm():
    backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3)
    with pytest.raises(ValueError, match="functorch#534"):
        MAML(backbone, task_batching="vmap")
    # first order through BatchNorm under vmap is allowed and agrees with the loop
    b = batch(image=True, dtype=torch.float32)
    results = []
    for batching in ("loop", "vmap"):
        model = MAML(backbone, inner_lr=0.3, first_order=True, task_batching=batching)
        results.append(torch.autograd.grad(model.meta_loss(b).loss, list(backbone.parameters())))
    for a, v in zip(*results):
        torch.testing.assert_close(a, v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_running_statistics_are_never_updated_silently(name):
    backbone = create_model("conv4", hidden=4, bn="running", image_size=16, out_features=3)
    model = MAML(backbone, inner_lr=0.3) if name == "maml" else Reptile(backbone, inner_steps=2, eval_inner_steps=2)
    before = {k: v.clone() for k, v in backbone.named_buffers()}
    b = batch(image=True, dtype=torch.float32)
    model.meta_loss(b).loss.backward()
    with torch.no_grad():
        model.predict(b.support_x, b.support_y, b.query_x)
    assert all(torch.equal(before[k], v) for k, v in backbone.named_buffers())


def test_predict_adapts_under_no_grad_and_leaves_the_module_alone():
    backbone = mlp()
    model = MAML(backbone, inner_lr=0.5, inner_steps=1, eval_inner_steps=3)
    b = batch()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        adapted = model.predict(b.support_x, b.support_y, b.query_x)
        plain = backbone(b.query_x.flatten(0, 1)).view_as(adapted)
    assert not torch.allclose(adapted, plain)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_reptile_transductive_and_not():
    backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3)
    b = batch(image=True, dtype=torch.float32)
    plain = Reptile(backbone, inner_steps=1, eval_inner_steps=2)
    trans = Reptile(backbone, inner_steps=1, eval_inner_steps=2, transductive=True)
    with torch.no_grad():
        a = plain.predict(b.support_x, b.support_y, b.query_x)
        t = trans.predict(b.support_x, b.support_y, b.query_x)
        # non-transductive: a query's output does not depend on the other queries
        one = plain.predict(b.support_x, b.support_y, b.query_x[:, :1])
    torch.testing.assert_close(a[:, :1], one)
    assert a.shape == t.shape and not torch.allclose(a, t)


def _conv4_meta_gradient(precision: str, dtype: torch.dtype, batching: str = "loop") -> torch.Tensor:
    b = batch(tasks=3, image=True)
    b = EpisodeBatch(b.support_x.to(dtype), b.support_y, b.query_x.to(dtype), b.query_y, SPEC)
    torch.manual_seed(0)
    backbone = create_model("conv4", hidden=16, bn="batch", image_size=16, out_features=3).to(dtype)
    model = MAML(backbone, inner_lr=0.4, inner_steps=1, precision=precision, task_batching=batching)
    out = model.meta_loss(b)
    assert out.logits.dtype == dtype  # query outputs come back in the inputs' dtype
    return torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, list(backbone.parameters()))]).double()


def test_bfloat16_query_pass_keeps_the_meta_gradient_within_the_stated_bound():
    # Second order through BatchNorm, the default MAML configuration. Float32 is the
    # reference precision: its error against float64 is ~1e-6; bfloat16 query passes
    # (the inner loop stays float32) are documented as within a few percent.
    reference = _conv4_meta_gradient("float32", torch.float64)
    exact = _conv4_meta_gradient("float32", torch.float32)
    fast = _conv4_meta_gradient("bfloat16", torch.float32)
    relative = lambda g: ((g - reference).norm() / reference.norm()).item()
    assert relative(exact) < 1e-5
    assert 1e-5 < relative(fast) < 0.05  # bfloat16 really ran, and stayed within the bound
    torch.testing.assert_close(_conv4_meta_gradient("bfloat16", torch.float32), fast)  # deterministic


def test_auto_precision_is_the_native_one(monkeypatch):
    import fastadapt.runtime as runtime

    for native, same_as in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(runtime, "native_bfloat16", lambda device_type, native=native: native)
        torch.testing.assert_close(_conv4_meta_gradient("auto", torch.float32), _conv4_meta_gradient(same_as, torch.float32),
                                   rtol=0, atol=0)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp8'"):
        MAML(mlp(), precision="fp8")


def _learner(name: str, batching: str, workers: int = 1) -> nn.Module:
    torch.manual_seed(0)
    backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3).double()
    kwargs = {"task_batching": batching, "task_workers": workers, "inner_steps": 2}
    if name == "metasgd":
        return MetaSGD(backbone, inner_lr=0.2, **kwargs)
    if name == "anil":
        return ANIL(backbone, inner_lr=0.3, **kwargs)
    return MAML(backbone, inner_lr=0.3, first_order=name == "fomaml", **kwargs)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_stream_gives_the_loop_meta_gradient_loss_and_outputs(name, workers):
    # Second order through affine BatchNorm in float64; 3 tasks, so 2 workers get 2 + 1.
    b = batch(tasks=3, image=True)
    results = {}
    for batching, w in (("loop", 1), ("stream", workers)):
        model = _learner(name, batching, w)
        out = model.meta_loss(b)
        results[batching] = out, torch.autograd.grad(out.loss, list(model.parameters()))
    (loop, loop_grads), (stream, stream_grads) = results["loop"], results["stream"]
    torch.testing.assert_close(stream.loss, loop.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(stream.logits, loop.logits, rtol=1e-12, atol=0)
    assert len(stream_grads) == len(loop_grads) > 0
    for s, g in zip(stream_grads, loop_grads):
        torch.testing.assert_close(s, g, rtol=1e-9, atol=1e-12)


def _meta_step_with(name, batching, workers, b, on_first_conv, **inner):
    """Loss, logits, meta-gradients and predictions of ``_learner`` with ``inner`` settings replaced;
    ``on_first_conv(output)`` sees every output of the first convolution (support and query passes)."""
    model = _learner(name, batching, workers)
    model.inner = dataclasses.replace(model.inner, **inner)
    hook = model.backbone.features[0].register_forward_hook(lambda m, i, o: on_first_conv(o))
    out = model.meta_loss(b)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    with torch.no_grad():
        predictions = model.predict(b.support_x, b.support_y, b.query_x)
    hook.remove()
    return out.loss.detach(), out.logits, grads, predictions


@pytest.mark.parametrize("batching, workers", [("stream", 1), ("stream", 2), ("loop", 1)])
@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_query_channels_last_changes_no_result_and_runs_the_queries_nhwc(name, batching, workers):
    b = batch(tasks=3, image=True)
    results, layouts = [], []
    for channels_last in (False, True):
        # the first convolution has one input channel: contiguous in both layouts
        record = lambda o: layouts.append((channels_last, len(o), o.is_contiguous(memory_format=torch.channels_last)))
        loss, logits, grads, predictions = _meta_step_with(
            name, batching, workers, b, record, query_channels_last=channels_last
        )
        results.append((loss, logits, predictions, grads))
    (loss, logits, predictions, grads), (loss_cl, logits_cl, predictions_cl, grads_cl) = results
    torch.testing.assert_close(loss_cl, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(logits_cl, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(predictions_cl, predictions, rtol=1e-10, atol=1e-12)
    for a, g in zip(grads_cl, grads):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)
    # query passes (6 examples) NHWC only with the option; support passes (6 examples) keep NCHW
    nhwc = {(cl, nhwc) for cl, n, nhwc in layouts}
    assert (True, True) in nhwc and (False, True) not in nhwc
    assert any(cl and not is_nhwc for cl, n, is_nhwc in layouts)  # the inner loop's passes


def test_query_channels_last_is_refused_with_vmap():
    with pytest.raises(ValueError, match="query_channels_last needs task_batching"):
        MAML(create_model("conv4", hidden=4, bn="none", image_size=16, out_features=3), task_batching="vmap",
             query_channels_last=True)
    model, b = mlp(), batch()
    with pytest.raises(ValueError, match="query_channels_last needs task_batching"):
        meta_batch_loss(model, dict(model.named_parameters()), {}, b.support_x, b.support_y, b.query_x, b.query_y,
                        nn.functional.cross_entropy, 1, 0.1, batching="vmap", query_channels_last=True)


@pytest.mark.parametrize("batching, workers", [("stream", 1), ("stream", 2), ("loop", 1)])
@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_second_order_kernels_give_the_same_meta_gradient(name, batching, workers):
    # Conv-4 with stride-2 convolutions and batch-statistics BatchNorm, 2 inner steps, float64.
    b = batch(tasks=3, image=True)
    results, nodes = [], []
    for kernels in (False, True):
        record = lambda o: nodes.append((kernels, o.grad_fn.name() if o.grad_fn else "no graph"))
        loss, logits, grads, _ = _meta_step_with(name, batching, workers, b, record, second_order_kernels=kernels)
        results.append((loss, logits, grads))
    (loss, logits, grads), (loss_k, logits_k, grads_k) = results
    torch.testing.assert_close(loss_k, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(logits_k, logits, rtol=1e-12, atol=1e-14)
    for a, g in zip(grads_k, grads):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)
    # the support passes (and only they) ran the compiled convolution
    assert {(k, "Conv" in n and "Cpp" in n) for k, n in nodes} == {(False, False), (True, True), (True, False)}


@pytest.mark.skipif(not kernels_available(), reason="fastadapt's C++ extension cannot be built here")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
def test_query_compact_activations_give_the_same_meta_gradient(name, workers, monkeypatch):
    # Conv-4 (1-channel input: its first convolution is recomputed), 2 inner steps, float64.
    b = batch(tasks=3, image=True)
    results, nodes, modes = [], [], []
    real = inner_loop.compact_activations
    monkeypatch.setattr(inner_loop, "compact_activations", lambda enabled: modes.append(enabled) or real(enabled))
    for compact in (False, True):
        record = lambda o: nodes.append((compact, o.requires_grad and len(o) == len(b.query_x[0])))
        results.append(_meta_step_with(name, "stream", workers, b, record, query_compact=compact))
        assert any(modes) is compact  # the query passes with a graph ran under the mode exactly when asked
        modes.clear()
    (loss, logits, grads, predictions), (loss_c, logits_c, grads_c, predictions_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(logits_c, logits, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(predictions_c, predictions, rtol=0, atol=0)  # no graph: nothing changes
    for a, g in zip(grads_c, grads):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)
    assert (True, True) in nodes  # the query passes ran with a graph


def test_query_compact_activations_need_stream_batching():
    with pytest.raises(ValueError, match="query_compact_activations needs task_batching='stream'"):
        MAML(create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3), task_batching="loop",
             query_compact_activations=True)


def test_second_order_kernels_are_refused_with_vmap():
    with pytest.raises(ValueError, match="second_order_kernels needs task_batching"):
        MAML(create_model("conv4", hidden=4, bn="none", image_size=16, out_features=3), task_batching="vmap",
             second_order_kernels=True)


@pytest.mark.parametrize("batching, workers", [("stream", 1), ("stream", 2), ("loop", 1)])
@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd"])
@pytest.mark.parametrize("kernels", [False, True], ids=["autograd", "kernels"])
def test_inner_checkpoint_gives_the_same_meta_gradient(name, batching, workers, kernels):
    # Conv-4 with batch-statistics BatchNorm, 2 inner steps, float64; with and without the compiled kernels.
    b = batch(tasks=3, image=True)
    results = []
    for checkpoint in (False, True):
        results.append(_meta_step_with(
            name, batching, workers, b, lambda o: None, checkpoint=checkpoint, second_order_kernels=kernels
        ))
    (loss, logits, grads, predictions), (loss_c, logits_c, grads_c, predictions_c) = results
    torch.testing.assert_close(loss_c, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(logits_c, logits, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(predictions_c, predictions, rtol=0, atol=0)
    for a, g in zip(grads_c, grads):
        torch.testing.assert_close(a, g, rtol=1e-9, atol=1e-12)


def test_inner_checkpoint_is_an_algorithm_argument_and_refused_with_vmap():
    backbone = create_model("conv4", hidden=4, bn="none", image_size=16, out_features=3)
    assert MAML(backbone, inner_checkpoint=True).inner.checkpoint
    assert MetaSGD(backbone, inner_checkpoint=True).inner.checkpoint
    assert ANIL(backbone, inner_checkpoint=True).inner.checkpoint
    with pytest.raises(ValueError, match="inner_checkpoint needs task_batching"):
        MAML(backbone, task_batching="vmap", inner_checkpoint=True)


def test_stream_loss_is_the_plain_mean_loss_under_no_grad():
    b = batch(tasks=3, image=True)
    model = _learner("maml", "stream", 2)
    with torch.no_grad():
        out = model.meta_loss(b)
    assert out.loss.grad_fn is None
    torch.testing.assert_close(out.loss, _learner("maml", "loop").meta_loss(b).loss.detach(), rtol=1e-12, atol=0)


class SavedTensors:
    """Counts the tensors autograd keeps for backward that are alive at any time."""

    def __init__(self) -> None:
        self.alive = self.peak = 0

    def pack(self, tensor):
        holder = Holder(tensor, self)
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        return holder


class Holder:
    def __init__(self, tensor, counter):
        self.tensor, self.counter = tensor, counter

    def __del__(self):
        self.counter.alive -= 1


def test_stream_keeps_one_task_graph_at_a_time():
    b = batch(tasks=6, image=True)
    peaks, kept = {}, {}
    for batching in ("loop", "stream"):
        model = _learner("maml", batching)
        counter = SavedTensors()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda holder: holder.tensor):
            out = model.meta_loss(b)
            kept[batching] = counter.alive  # held by the returned loss until its backward
            out.loss.backward()
        peaks[batching] = counter.peak
    assert kept["stream"] <= 2 * len(list(model.parameters())) < kept["loop"]
    assert peaks["stream"] * 4 < peaks["loop"]  # one task's graph, not six


def test_task_workers_need_stream_batching():
    with pytest.raises(ValueError, match="task_workers=2 needs task_batching='stream'"):
        MAML(mlp(), task_batching="loop", task_workers=2)


def test_predict_and_reptile_agree_across_worker_counts():
    b = batch(tasks=3, image=True)
    with torch.no_grad():
        one, two = (_learner("maml", "stream", w).predict(b.support_x, b.support_y, b.query_x) for w in (1, 2))
    torch.testing.assert_close(one, two, rtol=0, atol=0)
    grads = []
    for workers in (1, 2):
        torch.manual_seed(0)
        backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3).double()
        model = Reptile(backbone, inner_lr=0.1, inner_steps=2, eval_inner_steps=2, inner_batch=3, task_workers=workers)
        out = model.meta_loss(b)
        grads.append((out.loss.detach(), torch.autograd.grad(out.loss, list(backbone.parameters()))))
        with torch.no_grad():
            grads[-1] += (model.predict(b.support_x, b.support_y, b.query_x),)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    for a, c in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grads[0][2], grads[1][2], rtol=0, atol=0)


def test_reptile_with_channels_last_parameters_matches_the_default_layout():
    """The speed settings' NHWC parameters (``train.channels_last``) change no result. Inner SGD:
    Adam would turn the rounding noise in the zero gradient of a conv bias before BatchNorm into
    full-size steps of either sign (the same with any change of summation order)."""
    b = batch(tasks=3, image=True)
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = create_model("conv4", hidden=4, bn="batch", image_size=16, out_features=3).double()
        model = Reptile(backbone, inner_lr=0.1, inner_steps=2, inner_batch=3, inner_optimizer="sgd", task_workers=2)
        if channels_last:
            model.to(memory_format=torch.channels_last)
            assert backbone.features[4].weight.is_contiguous(memory_format=torch.channels_last)
        out = model.meta_loss(b)
        results.append(torch.autograd.grad(out.loss, list(backbone.parameters())))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-13)
