"""Config validation: every bad input is an error naming the key path and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cifar_tune.config import ConfigError, apply_overrides, load_config, validate_config
from cifar_tune.orchestrator.param_space import param_space
from cifar_tune.search import SearchPlan


def _with(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for name, values in sections.items():
        out[name] = {**out.get(name, {}), **values} if isinstance(values, dict) else values
    return out


@pytest.mark.parametrize("change, key, value", [
    ({"train": {"epochs": -1}}, "train.epochs", "-1"),
    ({"train": {"epochs": "many"}}, "train.epochs", "'many'"),
    ({"train": {"precision": "fp8"}}, "train.precision", "'fp8'"),
    ({"train": {"epoch": 3}}, "train.epoch", "3"),
    ({"resources": {"gpus_per_trial": 1.5}}, "resources.gpus_per_trial", "1.5"),
    ({"resources": {"cpus_per_trial": 0}}, "resources.cpus_per_trial", "0"),
    ({"data": {"download": False, "root": "/no/such/dir"}}, "data", "/no/such/dir"),
    ({"data": {"val_size": 0}}, "data.val_size", "0"),
    ({"tune": {"scheduler": "hyperband"}}, "tune.scheduler", "'hyperband'"),
    ({"tune": {"metric": "accuracy"}}, "tune.metric", "'accuracy'"),
    ({"ray": {"max_failures": -5}}, "ray.max_failures", "-5"),
    ({"name": "my experiment/1"}, "name", "my experiment/1"),
    ({"colour": "blue"}, "colour", "'blue'"),
    ({"search": {"precision": ["fp32", "fp64"]}}, "search.precision[1]", "'fp64'"),
    ({"search": {"lr": {"loguniform": [0, 0.1]}}}, "search.lr.loguniform[0]", "0"),
    ({"search": {"lr": {"loguniform": [0.1, 0.01]}}}, "search.lr.loguniform", "[0.1, 0.01]"),
    ({"search": {"lr": {"normal": [0, 1]}}}, "search.lr", "normal"),
    ({"search": {"lr": []}}, "search.lr", "empty"),
    ({"search": {"colour": [1, 2]}}, "search.colour", "searchable keys"),
    ({"search": {"dropout": [0.5, 1.5]}}, "search.dropout[1]", "1.5"),
    ({"search": {"precision": {"uniform": ["fp32", "tf32"]}}}, "search.precision.uniform", "not numeric"),
])
def test_bad_values_name_key_and_value(tiny_raw, change, key, value) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(_with(tiny_raw, **change))
    message = str(exc.value)
    assert message.startswith(key + ":") or f"\n{key}:" in message or f" {key} " in message, message
    assert value in message, message


def test_unknown_key_suggests_the_right_one(tiny_raw) -> None:
    with pytest.raises(ConfigError, match=r"train\.batchsize: unknown key .*did you mean 'batch_size'"):
        validate_config(_with(tiny_raw, train={"batchsize": 64}))


def test_yaml_strings_that_look_like_numbers_are_coerced(tiny_raw) -> None:
    # PyYAML reads 1e-3 (no dot) as a string; the schema turns it into the float the user meant.
    raw = _with(tiny_raw, search={"lr": {"loguniform": ["1e-3", "1e-1"]}, "weight_decay": ["5e-4", 0]})
    config = validate_config(raw)
    assert config.search["lr"] == {"loguniform": [1e-3, 1e-1]}
    assert config.search["weight_decay"] == [5e-4, 0.0]


def test_overrides_set_nested_keys_parsed_as_yaml() -> None:
    raw = apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "search.precision=[fp32,amp_bf16]",
                                                      "tune.num_samples=2", "ray.address=auto"])
    assert raw == {"train": {"epochs": 5}, "search": {"precision": ["fp32", "amp_bf16"]},
                   "tune": {"num_samples": 2}, "ray": {"address": "auto"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.*not a section"):
        apply_overrides({"train": 3}, ["train.epochs=1"])


def test_load_config_file_with_overrides(tiny_raw, tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    config = load_config(path, ["train.lr=0.3", "search.seed=[0, 1, 2]"])
    assert config.train.lr == 0.3 and config.search["seed"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_search_expands_grids_and_places_values(tiny_raw) -> None:
    config = validate_config(_with(tiny_raw, search={"precision": ["fp32", "amp_bf16"], "seed": [0, 1, 2],
                                                      "model.dropout": [0.3]},
                                   tune={"num_samples": 2}))
    plan = SearchPlan.of(config)
    trials = plan.trials
    assert len(trials) == 2 * 2 * 3
    assert trials[0] == {"precision": "fp32", "seed": 0, "dropout": 0.3}
    assert plan.columns == ["precision", "seed", "dropout"]
    assert plan.values("precision") == ["fp32", "amp_bf16"] and plan.values("lr") == [0.02]
    space = param_space(config, plan)
    assert space["train"]["precision"] == {"grid_search": ["fp32", "amp_bf16"]}
    assert space["model"]["dropout"] == {"grid_search": [0.3]}
    assert "search" not in space and space["train"]["lr"] == 0.02


def test_distribution_becomes_a_tune_domain(tiny_raw) -> None:
    from ray.tune.search.sample import Float

    config = validate_config(_with(tiny_raw, search={"lr": {"loguniform": [1e-3, 1e-1]}}))
    plan = SearchPlan.of(config)
    domain = param_space(config, plan)["train"]["lr"]
    assert isinstance(domain, Float) and domain.lower == 1e-3 and domain.upper == 1e-1
    assert plan.trials == ({"lr": "loguniform(0.001, 0.1)"},)


def test_scheduler_horizon_is_the_longest_trial(tiny_raw) -> None:
    assert SearchPlan.of(validate_config(_with(tiny_raw, search={"epochs": [3, 8]}))).max_epochs == 8
    assert SearchPlan.of(validate_config(_with(tiny_raw, search={"epochs": {"randint": [2, 12]}}))).max_epochs == 12
    assert SearchPlan.of(validate_config(tiny_raw)).max_epochs == tiny_raw["train"]["epochs"]
