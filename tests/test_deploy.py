"""deploy/: what can be checked without a cloud account. The cluster-launcher YAML passes Ray's own
schema, the KubeRay RayJob is well formed, both install cifar-tune with the README's node install
line and hold no credentials, and the RayJob's entrypoint, the command docs/cluster.md documents,
passes `--dry-run` as it would run under the job (RAY_ADDRESS set)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

from cifar_tune.orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
README = (ROOT / "README.md").read_text()
CLUSTER_DOC = (ROOT / "docs" / "cluster.md").read_text()
NODE_INSTALL = "pip install torch==2.14.1 torchvision==0.29.1 -e '.[gpu]'"


def test_the_cluster_launcher_yaml_passes_rays_schema() -> None:
    cluster = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}  # no trial on the head
    assert any(t.get("max_workers", 0) > 0 for name, t in types.items() if name != cluster["head_node_type"])
    assert any(NODE_INSTALL in command for command in cluster["setup_commands"])


def test_the_rayjob_manifest_runs_the_documented_command() -> None:
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] in CLUSTER_DOC  # docs/cluster.md documents exactly this command
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same cifar-tune
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for group in cluster["workerGroupSpecs"]
               for c in group["template"]["spec"]["containers"])
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert NODE_INSTALL in dockerfile and NODE_INSTALL in README
    base_tag = re.search(r"^FROM rayproject/ray:([\d.]+)", dockerfile, re.MULTILINE).group(1)
    assert cluster["rayVersion"] == base_tag  # KubeRay's idea of the version is the image's


@pytest.mark.parametrize("name", ["cluster.yaml", "rayjob.yaml", "Dockerfile"])
def test_no_credentials_in_deploy_files(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert not re.search(r"(?i)(aws_secret_access_key|aws_access_key_id|wandb_api_key|AKIA[0-9A-Z]{16})", text)


def test_the_rayjob_entrypoint_passes_dry_run(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    entrypoint = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["cifar-tune", "run"]
    monkeypatch.chdir(ROOT)  # the image's working directory holds the repository
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # as under a Ray job: a GPU cluster, not this machine
    assert main([*argv[1:], "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "s3://YOUR-BUCKET/cifar-tune/study" in out and "trial  19" in out
