"""Omniglot recipes of the gradient-based learners (MAML, FOMAML, Meta-SGD, ANIL, Reptile).

MAML (Finn et al. 2017, appendix A.1 and cbfinn/maml): ``maml`` split (1100/100/423
shuffled characters) with rotations on every partition; Conv-4 with stride-2
convolutions, BatchNorm with batch statistics (transductive, also at test), global
average pooling and a linear head; meta-batch 32 (5-way) or 16 (20-way); 1 (5-way)
or 5 (20-way) inner steps in training, 10 (5-way, as in the code) or 5 (20-way) at
test; K support and K query examples per class; Adam 1e-3; 60,000 iterations; the
last iterate is tested on 600 episodes. Inner loss scale: the TF code's inner loss is
the per-example cross-entropy divided by K and summed, i.e. ways x the mean, so the
paper's step sizes 0.4 (5-way) and 0.1 (20-way) are 2.0 on our mean loss.

Differences: rotations are whole classes (``Rotations``) rather than drawn per class
per task; the character shuffle cannot be the original's (see ``fastadapt.data.omniglot``).
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

MAML_SOURCE = "Finn et al. 2017, MAML, Table 1 (arXiv:1703.03400)"


def _maml(
    name: str, ways: int, shots: int, value: float | None, ci95: float | None, source: str,
    algorithm: str = "maml", **args: object,
) -> Config:
    five_way = ways == 5
    algorithm_args = {"inner_lr": 2.0, "inner_steps": 1 if five_way else 5, "eval_inner_steps": 10 if five_way else 5}
    algorithm_args.update(args)
    return Config(
        name=name,
        description=f"{algorithm} on Omniglot {ways}-way {shots}-shot (MAML split, transductive BN)",
        data=DataConfig(dataset="omniglot", split="maml", rotations=True, eval_rotations=True),
        train_task=TaskConfig(ways=ways, shots=shots, queries=shots, batch_size=32 if five_way else 16),
        eval_task=TaskConfig(ways=ways, shots=shots, queries=shots, batch_size=1),
        backbone=ComponentConfig(
            "conv4", {"in_channels": 1, "hidden": 64, "out_features": ways, "bn": "batch", "pool": "stride", "readout": "mean"}
        ),
        algorithm=ComponentConfig(algorithm, algorithm_args),
        optim=OptimConfig(name="adam", lr=1e-3),
        train=TrainConfig(iterations=60000, val_every=0, log_every=50, checkpoint_every=250),
        eval=EvalConfig(episodes=600, bn_policy="batch"),
        reference=Reference(value=value, ci95=ci95, source=source),
    )


@register_recipe
def maml_5w1s() -> Config:
    return _maml("omniglot/maml-5w1s", 5, 1, 98.7, 0.4, MAML_SOURCE)


@register_recipe
def maml_5w5s() -> Config:
    return _maml("omniglot/maml-5w5s", 5, 5, 99.9, 0.1, MAML_SOURCE)


@register_recipe
def maml_20w1s() -> Config:
    return _maml("omniglot/maml-20w1s", 20, 1, 95.8, 0.3, MAML_SOURCE)


@register_recipe
def maml_20w5s() -> Config:
    return _maml("omniglot/maml-20w5s", 20, 5, 98.9, 0.2, MAML_SOURCE)


@register_recipe
def fomaml_5w1s() -> Config:
    source = "Nichol et al. 2018, Reptile, Omniglot table, '1st-order MAML + Transduction' (arXiv:1803.02999)"
    # First order through BatchNorm is correct under vmap, and 1.4x faster (benchmarks/README.md).
    config = _maml("omniglot/fomaml-5w1s", 5, 1, 98.3, 0.5, source, first_order=True, task_batching="vmap")
    config.description = "first-order MAML on Omniglot 5-way 1-shot (MAML split, transductive BN)"
    return config


@register_recipe
def metasgd_5w1s() -> Config:
    # Meta-SGD learns the step sizes; they start at the MAML step size.
    source = "Li et al. 2017, Meta-SGD (arXiv:1707.09835), as quoted in T-NAS (ICLR 2020) Table 2"
    return _maml("omniglot/metasgd-5w1s", 5, 1, 99.53, 0.26, source, algorithm="metasgd")


@register_recipe
def anil_5w1s() -> Config:
    source = "Raghu et al. 2020 (ANIL) publish Omniglot 20-way only (96.2 ± 0.5 for 20w1s); no 5w1s figure"
    return _maml("omniglot/anil-5w1s", 5, 1, None, None, source, algorithm="anil")


@register_recipe
def reptile_5w1s() -> Config:
    """Reptile (Nichol et al. 2018; openai/supervised-reptile, 5-way 1-shot command)."""
    config = _maml(
        "omniglot/reptile-5w1s", 5, 1, 95.39, 0.09,
        "Nichol et al. 2018, Reptile v3, Omniglot table, non-transductive (transductive: 97.68 ± 0.04)",
        algorithm="reptile",
    )
    config.description = "Reptile on Omniglot 5-way 1-shot (non-transductive evaluation)"
    config.data.eval_rotations = False  # the paper's code rotates training classes only
    config.train_task = TaskConfig(ways=5, shots=10, queries=1, batch_size=5)  # train shots 10
    config.eval_task = TaskConfig(ways=5, shots=1, queries=1, batch_size=5)
    config.backbone.args.update(readout="flatten")
    config.algorithm.args = {
        "inner_lr": 1e-3, "inner_steps": 5, "eval_inner_steps": 50, "inner_batch": 10,
        "inner_optimizer": "adam", "transductive": False,
    }
    config.optim = OptimConfig(name="sgd", lr=1.0, schedule="linear")
    config.train.iterations = 100000
    config.eval.episodes = 10000
    config.eval.bn_policy = "support"
    return config
