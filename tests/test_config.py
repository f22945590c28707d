"""Typed config: round trip, overrides, and the errors users see."""

from __future__ import annotations

import pytest

from kdistill.config import Config, dump_config, load_config, parse_override, replace, to_dict
from kdistill.contracts import ConfigError
from kdistill.engine.builders import preflight


def test_round_trip_through_yaml(tmp_path):
    config = load_config(
        overrides=[
            "method.name=kd",
            "method.temperature=10",
            "student.kwargs={hidden: [64, 32]}",
            "schedule.milestones=[3, 6]",
        ]
    )
    dump_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(config)
    assert again.method.temperature == 10.0 and again.student.kwargs == {"hidden": [64, 32]}


def test_override_values_are_parsed_as_yaml_literals_and_type_checked():
    config = load_config(
        overrides=["train.epochs=7", "optim.lr=1e-3", "data.train_subset=null", "optim.clip_grad_norm=1"]
    )
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.optim.clip_grad_norm == 1.0 and isinstance(config.optim.clip_grad_norm, float)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["train.epochz=3"])
    message = str(error.value)
    assert "train.epochz" in message and "epochs" in message and "eval_every" in message


def test_unknown_top_level_key_in_file(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\ntrainer: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="unknown key trainer; valid keys: name, seed"):
        load_config(tmp_path / "c.yaml")


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 'three'"):
        load_config(overrides=["train.epochs=three"])
    with pytest.raises(ConfigError, match="train.amp: expected true or false"):
        load_config(overrides=["train.amp=1"])
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(overrides=["optim.lr=fast"])


def test_method_section_is_typed_by_the_method():
    assert load_config(overrides=["method.name=kd", "method.temperature=2"]).method.temperature == 2.0
    with pytest.raises(ConfigError, match="method.temperature"):
        load_config(overrides=["method.temperature=2"])  # default method ce has no temperature
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*Did you mean 'kd'"):
        load_config(overrides=["method.name=kdd"])


def test_replace_leaves_the_original_untouched():
    config = Config()
    changed = replace(config, ["train.epochs=99"])
    assert changed.train.epochs == 99 and config.train.epochs != 99


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_file_loads():
    from pathlib import Path

    configs = Path(__file__).parent.parent.joinpath("configs")
    files = sorted(configs.rglob("*.yaml"))
    assert files, "configs/ holds no YAML files"
    for path in files:
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("#"), f"{path} must start with a comment giving its command and target"
        if path.parent != configs / "compress":  # the search spaces of kdistill compress (test_compress_budget)
            load_config(path)


def test_switching_from_nesterov_sgd_turns_the_sgd_only_switch_off():
    nesterov_sgd = load_config(overrides=["optim.nesterov=true"])
    for switched in (
        load_config(base={"optim": {"nesterov": True}}, overrides=["optim.name=adamw"]),
        replace(nesterov_sgd, ["optim.name=adam"]),
    ):
        assert switched.optim.name in ("adam", "adamw") and switched.optim.nesterov is False  # recorded as run
    assert replace(nesterov_sgd, ["optim.lr=0.1"]).optim.nesterov is True  # only a switch of optimizer turns it off
    assert load_config(overrides=["optim.name=sgd", "optim.nesterov=true"]).optim.nesterov is True


def test_nesterov_asked_for_with_adam_or_without_momentum_gives_the_fix():
    with pytest.raises(
        ConfigError, match=r"optim.name='adam' \(its momentum is optim.betas\): add --set optim.nesterov=false"
    ):
        preflight(load_config(overrides=["student.name=mlp", "optim.name=adam", "optim.nesterov=true"]))
    with pytest.raises(ConfigError, match="add --set optim.momentum=0.9 or --set optim.nesterov=false"):
        preflight(load_config(overrides=["student.name=mlp", "optim.nesterov=true", "optim.momentum=0"]))
