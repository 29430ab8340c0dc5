"""The docs stay in step with the code: the config reference is the schema's own text, the layout
lists every module, the Python API imports, the variant table is the registry, and the README stays
a newcomer's first page (at most 200 lines, every link resolving)."""

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


DOCS = ROOT / "docs"


def test_readme_config_reference_is_the_schema_text() -> None:
    readme = (DOCS / "configuration.md").read_text()
    block = re.search(r"## Config reference.*?```yaml\n(.*?)```", readme, re.S).group(1)
    assert block.strip() == describe_schema(), "regenerate docs/configuration.md's block from describe_schema()"


def test_readme_config_reference_lists_every_key_with_its_default() -> None:
    readme = (DOCS / "configuration.md").read_text()
    block = re.search(r"## Config reference.*?```yaml\n(.*?)```", readme, re.S).group(1)
    documented = yaml.safe_load(block)
    assert _yaml_keys(documented) == _schema_keys()
    defaults = ExperimentConfig().model_dump()
    for section in ("model", "train", "tune", "resources", "ray", "export", "wandb"):
        assert documented[section] == defaults[section], section


@pytest.mark.parametrize("name", ["smoke", "cpu-study", "study"])
def test_shipped_configs_validate(name: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    raw.setdefault("data", {})["root"] = str(tmp_path)
    config = validate_config(raw)
    assert config.name == name


def test_readme_layout_matches_the_tree() -> None:
    readme = (DOCS / "architecture.md").read_text()
    block = re.search(r"## Layout.*?```\n(.*?)```", readme, re.S).group(1)
    listed = {m.group(1) for m in re.finditer(r"^  (\S+\.py)\b", block, re.M)}
    package = ROOT / "cifar_tune"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name != "__init__.py" or p.parent == package}
    assert listed == modules, {"not in README": modules - listed, "not in the tree": listed - modules}


def test_readme_python_api_imports_work() -> None:
    import cifar_tune
    import cifar_tune.analysis as analysis

    readme = (DOCS / "configuration.md").read_text()
    for module, names in re.findall(r"^from (cifar_tune[\w.]*) import (.+)$", readme, re.M):
        target = cifar_tune if module == "cifar_tune" else analysis if module == "cifar_tune.analysis" else None
        if target is None:
            continue
        for name in (n.strip() for n in names.split("#")[0].split(",")):
            assert hasattr(target, name), f"README: from {module} import {name}"


def test_readme_variant_table_is_the_registry() -> None:
    from cifar_tune.variants import markdown_table

    readme = (DOCS / "deployment.md").read_text()
    assert markdown_table() in readme, "regenerate docs/deployment.md's table from cifar_tune.variants.markdown_table()"


def test_readme_is_a_first_page_and_every_link_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    lines = [line for line in readme.splitlines() if line.strip()]
    assert any(line.endswith("# install") for line in lines[:12])  # install, test, then the main job
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def _anchor(heading: str) -> str:
    """GitHub's id for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_quotes_only_figures_results_md_holds_and_its_anchors_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    table = readme[readme.index("## Today's results"):readme.index("## What the main job prints")]
    figures = re.findall(r"[+-]?\d+\.\d+(?:x| pp|%)", table)
    assert len(figures) >= 8
    missing = [f for f in figures if f not in results]
    assert missing == [], f"README quotes figures RESULTS.md does not hold: {missing}"
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", results, re.M)}
    for page in [readme, results]:
        for target in re.findall(r"(?:RESULTS\.md)?#([\w\-]+)\)", page):
            assert target in anchors, f"no heading in RESULTS.md for #{target}"
