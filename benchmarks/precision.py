"""Precision and memory-layout settings: step time and meta-gradient error, side by side.

    python benchmarks/precision.py [--threads 2] [--steps 5] [--configs NAME ...]

For each config, one meta-training step (``meta_loss`` forward + backward, a batch of
real Omniglot episodes from the Vinyals training split (``--data synthetic``: uniform
noise of the same shape), Conv-4 with 64 filters) is timed for every variant in this
process (median of ``--steps`` after one warm-up step), and the variant's meta-gradient
is compared with a float64 run of the same model on a batch of noise images (no pooling ties) (relative error of
the flattened gradient). Variants: float32; ``precision=bfloat16`` (the learner's
option); ``bfloat16-all`` (the whole ``meta_loss`` under autocast, inner loop included:
what the option deliberately does not do); each also with ``train.channels_last``
(parameters and inputs NHWC). Appends rows to ``results/precision.jsonl``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from common import append_row, environment

from fastadapt.algorithms import create_algorithm
from fastadapt.models import create_model
from fastadapt.tasks import EpisodeBatch, TaskSpec

# name: (algorithm, algorithm args, backbone BN, spec, tasks per meta-batch)
CONFIGS = {
    "maml-5w1s15q-x32-2nd": ("maml", {"inner_lr": 0.4, "inner_steps": 1}, "batch", TaskSpec(5, 1, 15), 32),
    "protonet-60w1s5q": ("protonet", {}, "running", TaskSpec(60, 1, 5), 1),
    "protonet-5w5s15q": ("protonet", {}, "running", TaskSpec(5, 5, 15), 1),
}
VARIANTS = {  # name: (precision option, autocast everything, channels_last)
    "float32": ("float32", False, False),
    "bfloat16": ("bfloat16", False, False),
    "bfloat16-all": ("float32", True, False),
    "float32+channels_last": ("float32", False, True),
    "bfloat16+channels_last": ("bfloat16", False, True),
}


def make_batch(spec: TaskSpec, tasks: int, dtype: torch.dtype, channels_last: bool, data: str) -> EpisodeBatch:
    if data == "omniglot":
        from fastadapt.data.omniglot import load_omniglot
        from fastadapt.tasks import EpisodeSampler

        sampler = EpisodeSampler(load_omniglot(split="vinyals", partition="train", rotations=True), spec, seed=0)
        real = sampler.sample(range(tasks))
        support_x, query_x, support_y, query_y = real.support_x, real.query_x, real.support_y, real.query_y
    else:
        g = torch.Generator().manual_seed(0)
        support_x = torch.rand(tasks, spec.ways * spec.shots, 1, 28, 28, generator=g)
        query_x = torch.rand(tasks, spec.ways * spec.queries, 1, 28, 28, generator=g)
        support_y = torch.arange(spec.ways).repeat_interleave(spec.shots).repeat(tasks, 1)
        query_y = torch.arange(spec.ways).repeat_interleave(spec.queries).repeat(tasks, 1)

    def layout(x: torch.Tensor) -> torch.Tensor:  # (B, N, C, H, W) whose [t] slices are NHWC
        x = x.to(dtype)
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if channels_last else x

    return EpisodeBatch(layout(support_x), support_y, layout(query_x), query_y, spec)


def make_model(config: str, precision: str, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    name, args, bn, spec, _ = CONFIGS[config]
    torch.manual_seed(0)
    head = {"out_features": spec.ways} if name == "maml" else {}
    backbone = create_model("conv4", in_channels=1, hidden=64, bn=bn, **head)
    model = create_algorithm(name, backbone, **args, precision=precision).to(dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def meta_gradient(model: torch.nn.Module, batch: EpisodeBatch, autocast_all: bool) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast_all else contextlib.nullcontext()
    with context:
        loss = model.meta_loss(batch).loss
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--data", choices=["omniglot", "synthetic"], default="omniglot",
                        help="omniglot needs FASTADAPT_DATA (or the default data folder)")
    parser.add_argument("--no-record", action="store_true", help="print only (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for config in args.configs:
        _, _, _, spec, tasks = CONFIGS[config]
        # Gradient errors are measured on noise images: on Omniglot's near-binary images
        # max-pooling meets exact ties, which kernels break differently (another valid
        # subgradient, not an accuracy loss: float32 NCHW vs channels-last differ by ~2 % there).
        reference = meta_gradient(make_model(config, "float32", torch.float64, False),
                                  make_batch(spec, tasks, torch.float64, False, "synthetic"), False)
        baseline = None
        for variant, (precision, autocast_all, channels_last) in VARIANTS.items():
            model = make_model(config, precision, torch.float32, channels_last)
            batch = make_batch(spec, tasks, torch.float32, channels_last, args.data)
            noise = make_batch(spec, tasks, torch.float32, channels_last, "synthetic")
            error = ((meta_gradient(model, noise, autocast_all) - reference).norm() / reference.norm()).item()
            meta_gradient(model, batch, autocast_all)  # warm-up
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                meta_gradient(model, batch, autocast_all)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            baseline = baseline or median
            row = environment() | {
                "config": config, "data": args.data, "variant": variant, "median_s": median, "min_s": min(times),
                "speedup_vs_float32": baseline / median, "grad_rel_error_vs_float64": error, "steps": args.steps,
            }
            print(f"{config:24s} {variant:24s} {median * 1000:9.1f} ms  x{baseline / median:4.2f}  "
                  f"meta-gradient error vs float64 {error:.2e}", flush=True)
            if not args.no_record:
                append_row("precision", row)


if __name__ == "__main__":
    main()
