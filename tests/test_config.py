import pytest

from fastadapt.config import Config, ConfigError, apply_overrides
from fastadapt.engine.build import validate
from fastadapt.recipes import get_recipe, list_recipes
from fastadapt.registry import UnknownNameError


def test_overrides_are_typed():
    c = apply_overrides(get_recipe("omniglot/protonet-5w1s"), ["train.iterations=7", "optim.lr=1e-4", "data.rotations=false", "reference.value=null"])
    assert c.train.iterations == 7 and c.optim.lr == 1e-4 and c.data.rotations is False and c.reference.value is None
    assert apply_overrides(c, ["optim.lr=1"]).optim.lr == 1.0 and isinstance(apply_overrides(c, ["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iteration=3", "unknown key 'train.iteration'.*did you mean 'iterations'"),
        ("optim.name=adm", r"optim.name must be one of \['adam', 'sgd'\], got 'adm'; did you mean 'adam'"),
        ("train.iterations=many", "train.iterations must be int, got 'many'"),
        ("train.iterations=true", "train.iterations must be int, got True"),
        ("data.split.x=1", "goes deeper than the config"),
        ("lr", "not of the form key.sub=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_recipe("omniglot/protonet-5w1s"), [override])


def test_component_arguments_are_checked():
    recipe = get_recipe("omniglot/protonet-5w1s")
    with pytest.raises(ConfigError, match="unknown algorithm argument 'distanse'; did you mean 'distance'"):
        validate(apply_overrides(recipe, ["algorithm.args.distanse=cosine"]))
    with pytest.raises(ConfigError, match="backbone argument hidden must be int"):
        validate(apply_overrides(recipe, ["backbone.args.hidden=wide"]))
    with pytest.raises(UnknownNameError, match="unknown backbone 'conv5'"):
        validate(apply_overrides(recipe, ["backbone.name=conv5"]))
    with pytest.raises(ConfigError, match="eval.bn_policy is 'batch' but backbone.args.bn is 'running'"):
        validate(apply_overrides(recipe, ["eval.bn_policy=batch"]))
    with pytest.raises(ConfigError, match="must be a multiple of train.log_every"):
        validate(apply_overrides(recipe, ["train.log_every=100", "train.checkpoint_every=250"]))
    with pytest.raises(ConfigError, match="train.iterations must be >= 1"):
        validate(apply_overrides(recipe, ["train.iterations=0"]))


@pytest.mark.parametrize("name", list_recipes())
def test_recipes_validate_and_roundtrip(name):
    recipe = get_recipe(name)
    validate(recipe)
    assert recipe.reference.source and recipe.description
    import yaml

    assert Config.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_unknown_recipe_suggests():
    with pytest.raises(UnknownNameError, match="did you mean 'omniglot/protonet-5w1s'"):
        get_recipe("omniglot/protonet-5w1")


def test_reptile_transductive_flag_and_bn_policy_must_agree():
    recipe = get_recipe("omniglot/reptile-5w1s")
    with pytest.raises(ConfigError, match="transductive=True .* set eval.bn_policy=batch"):
        validate(apply_overrides(recipe, ["algorithm.args.transductive=true"]))
    validate(apply_overrides(recipe, ["algorithm.args.transductive=true", "eval.bn_policy=batch"]))
