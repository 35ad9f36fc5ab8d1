"""Sinusoid regression recipes: MAML paper section 5.1 and Table 2 (appendix C).

Tasks ``y = A sin(x - phase)``; MLP 1-40-40-1 (ReLU); meta-training with K = 10
support and 10 query points, one inner step of size 0.01, meta-batch 25, Adam 1e-3,
70,000 iterations, last iterate. Test: 600 tasks with K = 5 support points and
5 query points; the paper's table gives the query MSE after 1, 5 and 10 steps
(``algorithm.args.eval_inner_steps``). ``sinusoid/pretrain`` is the paper's
baseline: one network trained on all tasks jointly (no inner loop in training),
fine-tuned at test time with a step size chosen on validation tasks.
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

SOURCE = "Finn et al. 2017, MAML, Table 2 (K=5, 10 gradient steps; 1 and 5 steps: {})"


def _sinusoid(name: str, inner_steps: int, value: float, steps_figures: str, description: str) -> Config:
    return Config(
        name=name,
        description=description,
        data=DataConfig(dataset="sinusoid", split="default", rotations=False, eval_rotations=False),
        train_task=TaskConfig(ways=1, shots=10, queries=10, batch_size=25),
        eval_task=TaskConfig(ways=1, shots=5, queries=5, batch_size=100),
        backbone=ComponentConfig("mlp", {"in_features": 1, "hidden": [40, 40], "out_features": 1}),
        algorithm=ComponentConfig(
            "maml",
            # vmap: 5.7x faster than the task loop for this MLP (benchmarks/task_batching.py)
            {"inner_lr": 0.01, "inner_steps": inner_steps, "eval_inner_steps": 10, "loss": "mse", "task_batching": "vmap"},
        ),
        optim=OptimConfig(name="adam", lr=1e-3),
        train=TrainConfig(iterations=70000, val_every=0, log_every=500, checkpoint_every=2000),
        eval=EvalConfig(episodes=600, metric="mse", bn_policy="none"),
        reference=Reference(value=value, source=SOURCE.format(steps_figures)),
    )


@register_recipe
def maml() -> Config:
    return _sinusoid("sinusoid/maml", 1, 0.35, "0.67, 0.38", "MAML, sinusoid regression, K=10 training, K=5 test")


@register_recipe
def pretrain() -> Config:
    return _sinusoid(
        "sinusoid/pretrain", 0, 2.19, "2.41, 2.23",
        "Pretrained on all tasks + fine-tuning baseline, sinusoid regression, K=5 test",
    )
