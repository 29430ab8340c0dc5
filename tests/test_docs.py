"""The README's config reference and configs/ stay in step with the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from cifar_tune.orchestrator.config import ExperimentConfig, validate_config

ROOT = Path(__file__).resolve().parent.parent


def _schema_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _schema_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _yaml_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in node.items():
        if isinstance(value, dict) and name != "search":
            keys |= _yaml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_readme_config_reference_lists_every_key_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Config reference.*?```yaml\n(.*?)```", readme, re.S).group(1)
    documented = yaml.safe_load(block)
    assert _yaml_keys(documented) == _schema_keys()
    defaults = ExperimentConfig().model_dump()
    for section in ("model", "train", "tune", "resources", "ray", "export", "wandb", "debug"):
        assert documented[section] == defaults[section], section


@pytest.mark.parametrize("name", ["smoke", "cpu-study", "study"])
def test_shipped_configs_validate(name: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    raw.setdefault("data", {})["root"] = str(tmp_path)
    config = validate_config(raw)
    assert config.name == name
