import pytest

from pipelines.config.layers import load_config, parse_set
from pipelines.config.typed import ConfigError
from ssl_models.methods.simclr import SimCLRConfig


def test_recipe_then_embedded_profile_then_overrides():
    cfg = load_config()
    assert cfg.method == "simclr" and isinstance(cfg.method_args, SimCLRConfig)
    assert cfg.backbone.name == "resnet18" and cfg.views.groups["global"].size == 32  # profile
    assert cfg.method_args.temperature == 0.2  # the profile's simclr part
    assert cfg.optim.base_lr == 0.3  # recipe
    cfg = load_config(overrides=parse_set(["method_args.temperature=0.3", "train.epochs=3"]))
    assert cfg.method_args.temperature == 0.3 and cfg.train.epochs == 3


def test_user_data_gets_the_papers_recipe_not_the_laptop_profile():
    cfg = load_config(overrides={"data": {"path": "/shards"}})
    assert cfg.backbone.name == "resnet50" and cfg.views.groups["global"].size == 224
    assert cfg.method_args.temperature == 0.1


def test_yaml_file_layer(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "optim:\n  base_lr: 0.5\nviews:\n  groups:\n    global:\n      scale: [0.2, 1.0]\n"
    )
    cfg = load_config(config_file=str(f))
    assert cfg.optim.base_lr == 0.5 and cfg.views.groups["global"].scale == (0.2, 1.0)
    assert cfg.views.groups["global"].count == 2  # untouched keys survive the merge


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'; allowed keys: .*'base_lr'"),
        (["optim.name=adam"], r"'optim.name': 'adam' is not one of \['sgd', 'lars', 'adamw'\]"),
        (["train.epochs=ten"], "'train.epochs': expected an integer"),
        (["views.groups.global.scale=[0.1]"], "'views.groups.global.scale': expected 2 values"),
        (["method_args.temp=1"], "unknown config key 'method_args.temp'"),
        (["method=nope"], "'method': 'nope' is not one of"),
        (["novalue"], "--set expects key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(pairs, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=parse_set(pairs))


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 5  # type: ignore[misc]


@pytest.mark.parametrize("method, warned", [("rotnet", True), ("simclr", False)])
def test_rotnet_on_the_rotation_invariant_embedded_set_warns(tmp_path, caplog, method, warned):
    from pipelines.train.trainer import resolve_data

    sets = [f"data.cache_dir={tmp_path}", "data.embedded_train_per_class=2"]
    cfg = load_config(method, overrides=parse_set([*sets, "data.embedded_test_per_class=1"]))
    with caplog.at_level("WARNING"):
        resolve_data(cfg)
    assert ("random rotations" in caplog.text) == warned


def test_profile_defaults_to_laptop_without_data_and_paper_with_it():
    assert load_config("simclr").profile == "laptop"
    paper = load_config("simclr", None, {"data": {"path": "shards"}})
    assert paper.profile == "paper" and paper.backbone.name == "resnet50"
    # a laptop user trains the laptop profile on their own images
    laptop = load_config("byol", None, {"data": {"path": "shards"}, "profile": "laptop"})
    assert laptop.profile == "laptop"
    assert (laptop.backbone.name, laptop.backbone.width, laptop.data.path) == (
        "resnet18",
        0.25,
        "shards",
    )
    assert load_config("simclr", None, {"profile": "paper"}).backbone.name == "resnet50"
    with pytest.raises(ConfigError, match="'profile': 'desk' is not one of"):
        load_config("simclr", None, {"profile": "desk"})
