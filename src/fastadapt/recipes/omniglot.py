"""Omniglot recipes.

Prototypical Networks (Snell et al. 2017, section 3.1 and Table 1): Vinyals split
(1028/172/423 characters) with rotations as classes; Conv-4 with max-pooling,
64-d embeddings; training episodes of 60 classes with the test shots and 5 queries
per class; Adam, learning rate 1e-3 halved every 2000 episodes; BatchNorm with
running statistics at test time; 1000 test episodes. The paper trains until the
validation loss stops improving; we fix the number of episodes and keep the
checkpoint with the best validation accuracy.
"""

from __future__ import annotations

from fastadapt.config import (
    ComponentConfig,
    Config,
    DataConfig,
    EvalConfig,
    OptimConfig,
    Reference,
    TaskConfig,
    TrainConfig,
)
from fastadapt.recipes import register_recipe

PROTONET_SOURCE = "Snell et al. 2017, Prototypical Networks, Table 1 (arXiv:1703.05175)"


def _protonet(ways: int, shots: int, accuracy: float) -> Config:
    return Config(
        name=f"omniglot/protonet-{ways}w{shots}s",
        description=f"Prototypical Networks, Omniglot {ways}-way {shots}-shot (Vinyals split, rotations)",
        data=DataConfig(dataset="omniglot", split="vinyals", rotations=True),
        train_task=TaskConfig(ways=60, shots=shots, queries=5, batch_size=1),
        eval_task=TaskConfig(ways=ways, shots=shots, queries=15, batch_size=20),
        backbone=ComponentConfig("conv4", {"in_channels": 1, "hidden": 64, "bn": "running", "pool": "max"}),
        algorithm=ComponentConfig("protonet", {"distance": "euclidean"}),
        optim=OptimConfig(name="adam", lr=1e-3, schedule="step", step_size=2000, gamma=0.5),
        train=TrainConfig(iterations=20000, val_every=500, val_episodes=500, log_every=50, checkpoint_every=250),
        eval=EvalConfig(episodes=1000, bn_policy="running"),
        reference=Reference(value=accuracy, ci95=None, source=PROTONET_SOURCE),
    )


@register_recipe
def protonet_5w1s() -> Config:
    return _protonet(5, 1, 98.8)


@register_recipe
def protonet_5w5s() -> Config:
    return _protonet(5, 5, 99.7)


@register_recipe
def protonet_20w1s() -> Config:
    return _protonet(20, 1, 96.0)


@register_recipe
def protonet_20w5s() -> Config:
    return _protonet(20, 5, 98.9)
