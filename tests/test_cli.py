"""The `cifar-tune` command: help, dry runs, bad input, and joining an existing Ray cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

CLI = [sys.executable, "-m", "cifar_tune.orchestrator.cli"]
RAY = str(Path(sys.executable).parent / "ray")


def _cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def _write(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", [[], ["run"], ["resume"]])
def test_help(command: list[str]) -> None:
    result = _cli(*command, "--help")
    assert result.returncode == 0 and "usage: cifar-tune" in result.stdout


def test_dry_run_expands_trials_without_ray(tiny_raw, tmp_path: Path) -> None:
    path = _write(tiny_raw, tmp_path / "exp.yaml")
    start = time.perf_counter()
    result = _cli("run", str(path), "--dry-run", "--set", "search.precision=[fp32,amp_bf16]",
                  "--set", "search.seed=[0, 1, 2]", "--set", "resources.cpus_per_trial=0.5")
    assert result.returncode == 0, result.stderr
    assert "6 trial(s) x 3 epoch(s) on cpu" in result.stdout
    assert "0.5 CPU, 0 GPU" in result.stdout and "precision=amp_bf16, seed=2" in result.stdout
    assert not Path(tiny_raw["storage_path"]).exists()  # nothing written
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epochs=-3"], "train.epochs: Input should be greater than 0 (got -3)"),
    (["--set", "search.precision=[fp32,fp8]"], "search.precision[1]"),
    (["--set", "resources.gpus_per_trial=2"], "resources.gpus_per_trial"),
    (["--set", "train.epochs"], "expected KEY=VALUE"),
])
def test_bad_input_exits_2_with_the_key(tiny_raw, tmp_path: Path, args: list[str], message: str) -> None:
    path = _write(tiny_raw, tmp_path / "exp.yaml")
    result = _cli("run", str(path), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = _cli("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str) -> None:
    """Kill this test's cluster only. `ray stop` would kill every Ray on the machine, a developer's
    running experiment included; the cluster's own processes name its temp dir on their command
    line, and its agents are their children. (gcs_server and raylet ignore SIGTERM: SIGKILL.)"""
    def pgrep(*args: str) -> list[str]:
        return subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()

    owners = pgrep("-f", temp_dir)
    children = [child for pid in owners for child in pgrep("-P", pid)]
    if owners or children:
        subprocess.run(["kill", "-9", *owners, *children], capture_output=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_run_joins_an_existing_cluster(tiny_raw, tmp_path: Path) -> None:
    port = _free_port()
    # A short temp dir of its own (Ray's socket paths must stay under ~107 characters) marks its processes.
    temp_dir = tempfile.mkdtemp(prefix="ct-ray-", dir="/tmp")
    started = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        path = _write({**tiny_raw, "search": {"seed": [0, 1]}}, tmp_path / "exp.yaml")
        result = _cli("run", str(path), "--address", f"127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "embedded" not in result.stdout
        table = pd.read_csv(Path(tiny_raw["storage_path"]) / "tiny" / "results.csv")
        assert list(table["seed"]) == [0, 1] and (table["status"] == "TERMINATED").all()
        # The cluster outlives the experiment: we joined it, we did not own it.
        status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "token"})
        assert status.returncode == 0, status.stderr
    finally:
        _stop_cluster(temp_dir)
