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
from fastadapt.tasks.sampler import EpisodeSampler
from fastadapt.tasks.spec import TaskSpec

BN_DESCRIPTIONS = {
    "running": "running statistics (model.eval())",
    "batch": "batch statistics (transductive)",
}


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
    if config.train.val_every < 0:
        raise ConfigError(f"train.val_every must be >= 0, got {config.train.val_every}")
    task_spec(config.train_task), task_spec(config.eval_task)
    backbone_bn = config.backbone.args.get("bn")
    if backbone_bn is not None and backbone_bn != "none" and backbone_bn != config.eval.bn_policy:
        raise ConfigError(
            f"eval.bn_policy is {config.eval.bn_policy!r} but backbone.args.bn is {backbone_bn!r}; "
            "they must agree (the backbone's BatchNorm decides the statistics used at test time)"
        )


def task_spec(task: TaskConfig) -> TaskSpec:
    return TaskSpec(task.ways, task.shots, task.queries)


def build_model(config: Config) -> nn.Module:
    """Backbone wrapped in the algorithm, initialised from ``config.train.seed``.

    The global RNG is forked, so building a model leaves the caller's RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        backbone = create_model(config.backbone.name, **config.backbone.args)
        return create_algorithm(config.algorithm.name, backbone, **config.algorithm.args)


def load_partition(
    config: Config, partition: str, data_dir: str | Path | None, cache_dir: str | Path | None,
    download: bool = False,
) -> ClassDataset:
    data = config.data
    return load_dataset(
        data.dataset, data.split, partition, rotations=data.rotations,
        image_size=data.image_size, data_dir=data_dir, cache_dir=cache_dir, download=download,
    )


def build_sampler(dataset: ClassDataset, task: TaskConfig, seed: int) -> EpisodeSampler:
    return EpisodeSampler(dataset, task_spec(task), seed=seed)


def build_optimizer(config: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optim = config.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if optim.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=optim.lr, weight_decay=optim.weight_decay)
    step = optim.step_size if optim.step_size > 0 else max(config.train.iterations, 1) + 1
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=optim.gamma)
    return optimizer, scheduler
