"""The README's config reference and configs/ stay in step with the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from cifar_tune.config import ExperimentConfig, describe_schema, validate_config

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


def test_readme_config_reference_is_the_schema_text() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Config reference.*?```yaml\n(.*?)```", readme, re.S).group(1)
    assert block.strip() == describe_schema(), "regenerate the README block from cifar_tune.config.describe_schema()"


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


def test_readme_layout_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout.*?```\n(.*?)```", readme, re.S).group(1)
    listed = {m.group(1) for m in re.finditer(r"^  (\S+\.py)\b", block, re.M)}
    package = ROOT / "cifar_tune"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name != "__init__.py" or p.parent == package}
    assert listed == modules, {"not in README": modules - listed, "not in the tree": listed - modules}


def test_readme_python_api_imports_work() -> None:
    import cifar_tune
    import cifar_tune.analysis as analysis

    readme = (ROOT / "README.md").read_text()
    for module, names in re.findall(r"^from (cifar_tune[\w.]*) import (.+)$", readme, re.M):
        target = cifar_tune if module == "cifar_tune" else analysis if module == "cifar_tune.analysis" else None
        if target is None:
            continue
        for name in (n.strip() for n in names.split("#")[0].split(",")):
            assert hasattr(target, name), f"README: from {module} import {name}"


def test_readme_variant_table_is_the_registry() -> None:
    from cifar_tune.variants import markdown_table

    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate README's variant table from cifar_tune.variants.markdown_table()"
