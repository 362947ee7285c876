"""Search spaces: parsing, validation against the config, errors that name the key."""

import re
from pathlib import Path

import pytest

from pipelines.config.typed import ConfigError
from tuning.space import load_space, parse_space, unflatten, validate
from tuning.sweep import check_metric

SPACES = Path(__file__).resolve().parents[3] / "tuning" / "spaces"
EXAMPLE_METHOD = {
    "contrastive": "simclr",
    "self_distillation": "byol",
    "clustering": "swav",
    "feature_decorrelation": "barlow_twins",
    "context_based": "rotnet",
    "masked_image_modeling": "mae",
    "contrastive_generative": "ibot",
    "self_distillation_mim": "dino_v2",
}


def test_one_example_space_per_family_and_each_validates():
    from ssl_models.registry import METHODS

    families = {re.sub(r"[^a-z]+", "_", e.family.lower()) for e in METHODS.values()}
    assert {p.stem for p in SPACES.glob("*.yaml")} == families
    for stem, method in EXAMPLE_METHOD.items():
        dims = load_space(SPACES / f"{stem}.yaml")
        validate(dims, method, {})  # raises on a key the method's config lacks


def test_nested_and_dotted_keys_give_the_same_dimensions():
    flat = parse_space({"optim.base_lr": {"loguniform": [0.01, 1.0]}})
    nested = parse_space({"optim": {"base_lr": {"loguniform": [0.01, 1.0]}}})
    assert flat == nested
    assert flat[0].family == "loguniform" and flat[0].values == (0.01, 1.0)
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}


def test_to_tune_builds_each_family():
    from ray.tune.search.sample import Categorical, Float

    dims = parse_space(
        {
            "a": {"choice": [1, 2]},
            "b": {"uniform": [0, 1]},
            "c": {"loguniform": [0.1, 1]},
            "d": {"grid": [1, 2]},
        }
    )
    out = {d.key: d.to_tune() for d in dims}
    assert isinstance(out["a"], Categorical) and isinstance(out["b"], Float)
    assert isinstance(out["c"], Float) and out["d"] == {"grid_search": [1, 2]}


@pytest.mark.parametrize(
    "space, message",
    [
        ({"optim.base_lr": {"normal": [0, 1]}}, "space key 'optim.base_lr': unknown distribution"),
        ({"optim.base_lr": {"uniform": [1.0]}}, "space key 'optim.base_lr': uniform takes"),
        ({"optim.base_lr": {"uniform": [1.0, 0.5]}}, "needs low < high"),
        ({"optim.base_lr": {"loguniform": [0.0, 1.0]}}, "loguniform needs low > 0"),
        ({"train.seed": {"choice": []}}, "space key 'train.seed': choice takes a non-empty"),
        ({"train.seed": 3}, "space key 'train.seed': expected one of"),
        ([1, 2], "a search space is a non-empty mapping"),
    ],
)
def test_malformed_space_names_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space)


def test_unknown_hyperparameter_is_named_with_a_suggestion():
    dims = parse_space({"method_args.temprature": {"choice": [0.1, 0.2]}})
    with pytest.raises(ConfigError, match=r"'method_args.temprature'.*method_args.temperature"):
        validate(dims, "simclr", {})


def test_a_value_the_setting_rejects_is_named_before_any_trial():
    dims = parse_space({"optim.name": {"choice": ["sgd", "adam"]}})
    with pytest.raises(ConfigError, match=r"space key 'optim\.name': value 'adam' rejected"):
        validate(dims, "simclr", {})


def test_metric_no_trial_reports_is_an_error():
    with pytest.raises(ConfigError, match="--metric top5: no trial reports it"):
        check_metric("top5", "max", labeled=True)
    with pytest.raises(ConfigError, match="--metric knn_top1: the training shards have no labels"):
        check_metric("knn_top1", "max", labeled=False)
    check_metric("loss", "min", labeled=False)
