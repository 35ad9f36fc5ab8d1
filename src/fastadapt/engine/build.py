"""Builders: turn a ``Config`` into plain objects (model, samplers, optimiser).

Config never leaks into the classes: each builder reads the config and passes
plain arguments to a registered constructor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastadapt.algorithms import ALGORITHMS, create_algorithm
from fastadapt.config import Config, ConfigError, TaskConfig, check_component_args
from fastadapt.data.base import ClassDataset
from fastadapt.data.registry import load_dataset
from fastadapt.models import BACKBONES, create_model
from fastadapt.tasks.pairs import PairSampler
from fastadapt.tasks.sampler import EpisodeSampler, TaskSource
from fastadapt.tasks.sinusoid import SinusoidTasks
from fastadapt.tasks.spec import TaskSpec

BN_DESCRIPTIONS = {
    "running": "running statistics (model.eval())",
    "batch": "batch statistics (transductive)",
    "support": "batch statistics of the support set + 1 query (non-transductive)",
    "none": "no BatchNorm",
}
# Backbone BatchNorm mode -> evaluation policies it can implement.
_BN_COMPATIBLE = {"running": ("running",), "batch": ("batch", "support"), "none": ("none",)}
# Task distributions: the dataset name builds a task source directly (no class split).
DISTRIBUTIONS = ("sinusoid",)
_PARTITION_STREAM = {"train": 0, "val": 1, "test": 2}


def validate(config: Config) -> None:
    """Check a config before any work starts: components, their arguments, counts."""
    for kind, component, registry in (
        ("backbone", config.backbone, BACKBONES),
        ("algorithm", config.algorithm, ALGORITHMS),
    ):
        factory = registry.get(component.name)
        exclude = ("self", "backbone") if kind == "algorithm" else ("self",)
        check_component_args(kind, factory, component.args, exclude)
    for key, value in (
        ("train.iterations", config.train.iterations), ("eval.episodes", config.eval.episodes),
        ("train.val_episodes", config.train.val_episodes), ("train.log_every", config.train.log_every),
        ("train.checkpoint_every", config.train.checkpoint_every),
        ("train_task.batch_size", config.train_task.batch_size),
        ("eval_task.batch_size", config.eval_task.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if config.train.checkpoint_every % config.train.log_every:
        raise ConfigError(
            f"train.checkpoint_every ({config.train.checkpoint_every}) must be a multiple of train.log_every "
            f"({config.train.log_every}), so that a resumed run logs exactly what an uninterrupted one does"
        )
    if config.train.val_every < 0:
        raise ConfigError(f"train.val_every must be >= 0, got {config.train.val_every}")
    task_spec(config.train_task), task_spec(config.eval_task)
    backbone_bn = config.backbone.args.get("bn")
    if backbone_bn is not None and config.eval.bn_policy not in _BN_COMPATIBLE.get(backbone_bn, (backbone_bn,)):
        raise ConfigError(
            f"eval.bn_policy is {config.eval.bn_policy!r} but backbone.args.bn is {backbone_bn!r}; "
            "they must agree (the backbone's BatchNorm decides the statistics used at test time)"
        )
    transductive = config.algorithm.args.get("transductive")
    if backbone_bn == "batch" and transductive is not None and config.eval.bn_policy != ("batch" if transductive else "support"):
        raise ConfigError(
            f"algorithm.args.transductive={transductive} normalises queries "
            f"{'together' if transductive else 'one at a time with the support set'}, but eval.bn_policy is "
            f"{config.eval.bn_policy!r}; set eval.bn_policy={'batch' if transductive else 'support'} so that "
            "results describe what ran"
        )


def task_spec(task: TaskConfig) -> TaskSpec:
    return TaskSpec(task.ways, task.shots, task.queries)


def build_model(config: Config) -> nn.Module:
    """Backbone wrapped in the algorithm, initialised from ``config.train.seed``.

    The global RNG is forked, so building a model leaves the caller's RNG untouched.
    ``train.channels_last`` stores 4-d parameters channels-last (values unchanged).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        backbone = create_model(config.backbone.name, **config.backbone.args)
        model = create_algorithm(config.algorithm.name, backbone, **config.algorithm.args)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_partition(
    config: Config, partition: str, data_dir: str | Path | None, cache_dir: str | Path | None,
    download: bool = False,
) -> ClassDataset:
    data = config.data
    return load_dataset(
        data.dataset, data.split, partition,
        rotations=data.rotations if partition == "train" else data.eval_rotations,
        image_size=data.image_size, data_dir=data_dir, cache_dir=cache_dir, download=download,
    )


def build_source(
    config: Config, partition: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
    download: bool = False,
) -> TaskSource:
    """The task source of ``partition``: an episode sampler over its classes, or a task distribution.

    Training episodes use ``train.seed``; validation and test episodes ``eval.seed``, so
    every training seed is evaluated on the same episodes.
    """
    task = config.train_task if partition == "train" else config.eval_task
    seed = config.train.seed if partition == "train" else config.eval.seed
    if config.data.dataset in DISTRIBUTIONS:
        # One distribution for all partitions: disjoint counter streams keep them apart.
        return SinusoidTasks(task.shots, task.queries, seed=3 * seed + _PARTITION_STREAM[partition])
    dataset = load_partition(config, partition, data_dir, cache_dir, download)
    if partition == "train" and getattr(ALGORITHMS.get(config.algorithm.name), "train_on", "episodes") == "pairs":
        return PairSampler(dataset, seed=seed)  # verification learners (Siamese) train on pairs
    return EpisodeSampler(dataset, task_spec(task), seed=seed)


def build_optimizer(config: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.schedule == "step":
        if optim.step_size < 1:
            raise ConfigError(f"optim.step_size must be >= 1 for the step schedule, got {optim.step_size}")
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=optim.step_size, gamma=optim.gamma
        )
    elif optim.schedule == "linear":  # Reptile's meta step size, annealed to 0 over the run
        total = config.train.iterations
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / total))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    return optimizer, scheduler
