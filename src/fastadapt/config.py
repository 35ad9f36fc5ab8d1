"""Experiment configuration: typed dataclasses, ``key.sub=value`` overrides, YAML I/O.

Recipes are Python dataclass instances rather than YAML files: the field types
give override type-checking and editor completion for free, a recipe can be
derived from another with ``dataclasses.replace``, and nothing stringly-typed is
resolved at run time. YAML is the *output* format: ``fastadapt recipes show``
and every run directory's ``config.yaml`` hold the resolved config, which
``Config.from_dict`` reads back.

Component arguments (``backbone.args``, ``algorithm.args``) are checked against
the registered constructor's signature, so ``algorithm.args.distanse=cosine``
fails with a suggestion just like a misspelt field.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from fastadapt.registry import suggest


@dataclass
class DataConfig:
    """Which dataset and class split tasks are drawn from."""

    dataset: str = "omniglot"
    """registered dataset name (``fastadapt.data.DATASETS``)"""
    split: str = "vinyals"
    """named class split of the dataset (omniglot: vinyals, maml, lake)"""
    rotations: bool = True
    """add 90/180/270-degree rotations as distinct classes to the training classes"""
    eval_rotations: bool = True
    """the same for the validation and test classes"""
    image_size: int = 28
    """side of the square images after resizing"""


@dataclass
class TaskConfig:
    """Episodes of one phase (training or evaluation)."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    """query examples per class"""
    batch_size: int = 1
    """tasks per meta-batch (per evaluation call for evaluation)"""


@dataclass
class ComponentConfig:
    """A registered component and its constructor arguments."""

    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Outer-loop optimiser and learning-rate schedule."""

    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Literal["constant", "step", "linear"] = "constant"
    """constant; step: times ``gamma`` every ``step_size`` iterations; linear: decay to 0 at the end"""
    step_size: int = 2000
    gamma: float = 0.5


@dataclass
class TrainConfig:
    """Length and cadence of meta-training."""

    iterations: int = 1000
    """meta-iterations (outer updates)"""
    val_every: int = 500
    """validate every this many iterations (0: never; the last iterate is then used)"""
    val_episodes: int = 200
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0
    """seeds the episode streams and the initialisation"""
    threads: int = 0
    """torch intra-op threads (0: leave torch's default)"""
    tune_allocator: bool = True
    """keep freed memory in the process (glibc malloc; see fastadapt.runtime)"""
    tensor_pool: bool = True
    """serve large CPU tensors from fastadapt's pool of blocks reused by exact size
    (``fastadapt.tensor_pool``; needs the C++ extension, skipped where it cannot be built)"""
    max_minutes: float = 0.0
    """stop after this much wall time of training and validation, summed over resumes (0: no limit);
    the run then validates, checkpoints and tests as if ``iterations`` were reached there,
    and records the iterations it actually ran"""
    channels_last: bool = False
    """store the model's 4-d parameters channels-last (NHWC): faster oneDNN convolutions for
    large batches (ProtoNet steps: 1.31-1.36x in float32, 2.25-2.30x together with bfloat16,
    ``benchmarks/precision.py`` on the project's CPU), slower for MAML's small per-task batches"""


@dataclass
class EvalConfig:
    """The test protocol."""

    episodes: int = 1000
    metric: Literal["accuracy", "mse"] = "accuracy"
    bn_policy: Literal["running", "batch", "support", "none"] = "running"
    """BatchNorm statistics at test time: running (model.eval()); batch (of each task's queries,
    transductive); support (of the support set plus one query at a time); none"""
    seed: int = 0
    """seed of the validation and test episode sets (the same for every training seed)"""


@dataclass
class Reference:
    """The published figure a recipe reproduces."""

    value: float | None = None
    """published figure: mean accuracy in % (metric accuracy) or MSE (metric mse)"""
    ci95: float | None = None
    source: str = ""


@dataclass
class Config:
    """A complete experiment: what ``fastadapt train`` runs and saves as ``config.yaml``."""

    name: str = ""
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    train_task: TaskConfig = field(default_factory=TaskConfig)
    eval_task: TaskConfig = field(default_factory=TaskConfig)
    backbone: ComponentConfig = field(default_factory=lambda: ComponentConfig("conv4"))
    algorithm: ComponentConfig = field(default_factory=lambda: ComponentConfig("protonet"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: Reference = field(default_factory=Reference)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: dict[str, Any]) -> Config:
        """Rebuild a config from ``to_dict`` output, type-checking every value."""
        return _build(Config, values, "")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints, kwargs = _hints(cls), {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown key {prefix}{key!r}{suggest(key, list(hints))} (valid: {', '.join(hints)})")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}{suggest(str(value), [str(a) for a in args])}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin is not None and isinstance(origin, type):  # list[int], Sequence[int], tuple[...]
        if isinstance(value, origin) and not isinstance(value, (str, bytes)):
            return value
        raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_value(text: str) -> Any:
    """Parse an override's right-hand side as YAML (``5`` -> int, ``1e-3`` -> float, ``true``, ``[1,2]``)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads 1e-3 as a string; accept plain float syntax too.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Return ``config`` with ``key.sub=value`` overrides applied and type-checked.

    Example:
        >>> from fastadapt.config import Config
        >>> apply_overrides(Config(), ["train.iterations=10", "optim.lr=1e-4"]).optim.lr
        0.0001
    """
    values = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, text = item.split("=", 1)
        _set(values, key.strip().split("."), parse_value(text.strip()), Config, key.strip())
    return Config.from_dict(values)


def _set(values: dict[str, Any], path: list[str], value: Any, cls: type, full: str) -> None:
    hints = _hints(cls)
    head, rest = path[0], path[1:]
    if head not in hints:
        raise ConfigError(f"unknown key {full!r}: {head!r} is not one of {list(hints)}{suggest(head, list(hints))}")
    hint = hints[head]
    if not rest:
        values[head] = value
        return
    if dataclasses.is_dataclass(hint):
        _set(values[head], rest, value, hint, full)
    elif typing.get_origin(hint) is dict and len(rest) == 1:
        values[head][rest[0]] = value
    else:
        raise ConfigError(f"key {full!r} goes deeper than the config ({head!r} is a value)")


def check_component_args(kind: str, factory: Any, args: dict[str, Any], exclude: tuple[str, ...] = ()) -> None:
    """Check ``args`` against ``factory``'s signature: known names and annotated types."""
    parameters = {n: p for n, p in inspect.signature(factory).parameters.items() if n not in exclude}
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except (NameError, TypeError):
        hints = {}
    for key, value in args.items():
        if key not in parameters:
            raise ConfigError(
                f"unknown {kind} argument {key!r}{suggest(key, list(parameters))} (valid: {', '.join(parameters)})"
            )
        if key in hints:
            _coerce(hints[key], value, f"{kind} argument {key}")
