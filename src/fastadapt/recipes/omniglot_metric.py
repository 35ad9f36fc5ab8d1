"""Omniglot recipes of the metric learners: Matching Networks, Relation Networks, Siamese Networks.

Matching Networks (Vinyals et al. 2016, Table 1, cosine, no FCE, no fine-tuning): Vinyals
split with rotations as classes; Conv-4 with max-pooling (64-d embeddings); training
episodes with the test ways and shots. The paper states neither the query count, the
optimiser nor the training length: we take ProtoNets' protocol (same backbone and
split): 15 (5-way) or 5 (20-way) queries per class, Adam 1e-3 halved every 2000
episodes, 20,000 episodes, best validation checkpoint, running-statistics BatchNorm
at test, 1000 test episodes of 15 queries per class. One deliberate difference: the cosines
are scaled by a learned temperature (initial 10) instead of the formula's fixed 1. With
ReLU embeddings the cosines lie in [0, 1], so at scale 1 the attention is nearly uniform
and training stalls (5-way 1-shot: 75.9 % validation accuracy after 1,000 episodes and
87.0 % after 12,000, against 92.0 % after 1,000 with the learned scale, same seed and
validation episodes); ``algorithm.args.learn_temperature=false
algorithm.args.temperature=1`` restores the literal formula.

Relation Networks (Sung et al. 2018, Table 1; floodsung/LearningToCompare_FSL): the
paper's encoder (``relation_encoder``, 64x5x5 feature maps at 28x28) and relation module
(64 channels, FC 8); one task per update with 19/15/10/5 queries per class (5w1s, 5w5s,
20w1s, 20w5s); MSE on the sigmoid scores; Adam 1e-3 halved every 100,000 episodes;
1,000,000 episodes; BatchNorm always on batch statistics (the code never calls eval()),
so each test episode is normalised on its own (transductive, test batch size 1); 1000
test episodes with K queries per class. Differences: the ``maml`` split (1100/100/423
shuffled characters) stands in for the code's 1200/423 split of MAML's folders; rotations
are classes rather than one rotation per task; the code clips each network's gradient
norm at 0.5, uses its own weight initialisation, and selects the checkpoint on the test
set: we have no clipping, PyTorch's initialisation and select on validation.

Siamese Networks (Koch et al. 2015) as re-evaluated by Vinyals et al. 2016 (Table 1): the
Matching Networks setting (Vinyals split, Conv-4, running BatchNorm), trained as a
verifier on same/different pairs, then classifying by the mean ``P(same)`` per class.
Koch's SGD with per-layer learning rates is replaced by Adam 1e-3.
"""

from __future__ import annotations

from functools import partial

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

MATCHING_SOURCE = "Vinyals et al. 2016, Matching Networks, Table 1, cosine, no fine-tuning (arXiv:1606.04080)"
RELATION_SOURCE = "Sung et al. 2018, Relation Network, Table 1 (arXiv:1711.06025); ± is a t-based 95% CI"
SIAMESE_SOURCE = "Koch et al. 2015, Siamese Networks, as re-evaluated in Vinyals et al. 2016 Table 1 (MAML Table 1)"


def _vinyals(name: str, algorithm: ComponentConfig, train_task: TaskConfig, ways: int, shots: int) -> Config:
    """The Vinyals-split setting shared by the Matching and Siamese recipes."""
    return Config(
        name=name,
        description=f"{algorithm.name} on Omniglot {ways}-way {shots}-shot (Vinyals split, rotations)",
        data=DataConfig(dataset="omniglot", split="vinyals", rotations=True, eval_rotations=True),
        train_task=train_task,
        eval_task=TaskConfig(ways=ways, shots=shots, queries=15, batch_size=20),
        backbone=ComponentConfig("conv4", {"in_channels": 1, "hidden": 64, "bn": "running", "pool": "max"}),
        algorithm=algorithm,
        optim=OptimConfig(name="adam", lr=1e-3, schedule="step", step_size=2000, gamma=0.5),
        train=TrainConfig(iterations=20000, val_every=500, val_episodes=500, log_every=50, checkpoint_every=250),
        eval=EvalConfig(episodes=1000, bn_policy="running"),
    )


def _matching(ways: int, shots: int, accuracy: float) -> Config:
    train_task = TaskConfig(ways=ways, shots=shots, queries=15 if ways == 5 else 5, batch_size=1)
    algorithm = ComponentConfig(
        "matching", {"fce": False, "embedding_dim": 64, "temperature": 10.0, "learn_temperature": True}
    )
    config = _vinyals(f"omniglot/matching-{ways}w{shots}s", algorithm, train_task, ways, shots)
    config.reference = Reference(value=accuracy, ci95=None, source=MATCHING_SOURCE)
    return config


def _relation(ways: int, shots: int, queries: int, accuracy: float, ci95: float) -> Config:
    return Config(
        name=f"omniglot/relation-{ways}w{shots}s",
        description=f"Relation Networks on Omniglot {ways}-way {shots}-shot (maml split, transductive BN)",
        data=DataConfig(dataset="omniglot", split="maml", rotations=True, eval_rotations=True),
        train_task=TaskConfig(ways=ways, shots=shots, queries=queries, batch_size=1),
        eval_task=TaskConfig(ways=ways, shots=shots, queries=shots, batch_size=1),
        backbone=ComponentConfig("relation_encoder", {"in_channels": 1, "hidden": 64, "bn": "batch", "padding": "paper"}),
        algorithm=ComponentConfig(
            "relation",
            {"image_size": 28, "in_channels": 1, "relation_channels": 64, "relation_dim": 8, "loss": "mse", "bn": "batch"},
        ),
        optim=OptimConfig(name="adam", lr=1e-3, schedule="step", step_size=100000, gamma=0.5),
        train=TrainConfig(iterations=1_000_000, val_every=5000, val_episodes=500, log_every=100, checkpoint_every=1000),
        eval=EvalConfig(episodes=1000, bn_policy="batch"),
        reference=Reference(value=accuracy, ci95=ci95, source=RELATION_SOURCE),
    )


# The engine trains siamese on PairSampler batches (fastadapt.tasks.PairSampler, same_fraction 0.5):
# train_task is the pair sampler's nominal spec (2 classes, 1 example each side) and its batch_size
# counts pairs per step. Validation and test use ordinary episodes of eval_task through predict.
def _siamese(ways: int, shots: int, accuracy: float) -> Config:
    pairs = TaskConfig(ways=2, shots=1, queries=1, batch_size=128)
    algorithm = ComponentConfig("siamese", {"embedding_dim": 64, "aggregation": "mean"})
    config = _vinyals(f"omniglot/siamese-{ways}w{shots}s", algorithm, pairs, ways, shots)
    config.optim = OptimConfig(name="adam", lr=1e-3)
    config.train.iterations = 50000
    config.train.val_every = 1000
    config.reference = Reference(value=accuracy, ci95=None, source=SIAMESE_SOURCE)
    return config


# (ways, shots, published accuracy): one recipe each, e.g. "omniglot/matching-5w1s".
for _ways, _shots, _accuracy in ((5, 1, 98.1), (5, 5, 98.9), (20, 1, 93.8), (20, 5, 98.5)):
    register_recipe(partial(_matching, _ways, _shots, _accuracy))
# (ways, shots, training queries per class, accuracy, ci95)
for _ways, _shots, _queries, _accuracy, _ci95 in (
    (5, 1, 19, 99.6, 0.2), (5, 5, 15, 99.8, 0.1), (20, 1, 10, 97.6, 0.2), (20, 5, 5, 99.1, 0.1)
):
    register_recipe(partial(_relation, _ways, _shots, _queries, _accuracy, _ci95))
for _ways, _shots, _accuracy in ((5, 1, 97.3), (5, 5, 98.4), (20, 1, 88.2), (20, 5, 97.0)):
    register_recipe(partial(_siamese, _ways, _shots, _accuracy))
