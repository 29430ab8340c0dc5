"""The `cifar-tune` command: help, dry runs, bad input (in process, through `main(argv)`), and
joining a token-auth Ray cluster from the installed console script and from a notebook-like
process that imported Ray first; 200 trials on four nodes, each recorded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
import yaml
from ray_cluster import RAY, clean_env, free_port, left_by_a_run, node_processes, ray_workers, start_node, stop_node

from cifar_tune.orchestrator.cli import main

CIFAR_TUNE = str(Path(sys.executable).parent / "cifar-tune")


def _write(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("command", [[], ["run"], ["resume"], ["extend"], ["bench"], ["analyze"]])
def test_help(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: cifar-tune" in capsys.readouterr().out


def test_run_help_lists_every_config_section(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for section in ("data:", "train:", "export:", "wandb:"):
        assert section in out


def test_dry_run_expands_trials_without_ray(tiny_raw, tmp_path: Path, capsys, monkeypatch) -> None:
    from cifar_tune.orchestrator import experiment

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run started work")

    monkeypatch.setattr("ray.init", must_not_run)
    monkeypatch.setattr(experiment, "run_experiment", must_not_run)  # what the CLI imports when it runs
    path = _write(tiny_raw, tmp_path / "exp.yaml")
    code = main(["run", str(path), "--dry-run", "--set", "search.precision=[fp32,amp_bf16]",
                 "--set", "search.seed=[0, 1, 2]", "--set", "resources.cpus_per_trial=0.5",
                 "--set", "train.allow_slow_precision=true"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "6 trial(s) x 3 epoch(s) on cpu" in out
    assert "0.5 CPU, 0 GPU" in out and "precision=amp_bf16, seed=2" in out
    assert not Path(tiny_raw["storage_path"]).exists()  # nothing written


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epochs=-3"], "train.epochs: Input should be greater than 0 (got -3)"),
    (["--set", "search.precision=[fp32,fp8]"], "search.precision[1]"),
    (["--set", "search.lr=[0.1,-1]"], "search.lr[1]: Input should be greater than 0 (got -1)"),
    (["--set", "search.nope=[1]"], "search.nope: not a train or model key"),
    (["--set", "resources.gpus_per_trial=2"], "resources.gpus_per_trial"),
    (["--set", "train.epochs"], "expected KEY=VALUE"),
    (["--set", "trian.epochs=2"], "did you mean 'train'"),
])
def test_bad_input_exits_2_with_the_key(tiny_raw, tmp_path: Path, args: list[str], message: str, capsys) -> None:
    path = _write(tiny_raw, tmp_path / "exp.yaml")
    assert main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real cluster


class Nodes(NamedTuple):
    address: str  # host:port of the head
    client: str  # ray://host:port of its Ray Client server
    dirs: list[str]  # each node's temp dir, the head's first: their processes name it

    def client_server_logs(self) -> str:
        """The end of each Ray Client server's stderr on the head (the proxy's and per-client ones)."""
        logs = sorted(Path(self.dirs[0]).glob("session_latest/logs/ray_client_server*.err"))
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in logs)

    def run_leftovers(self) -> dict[str, int]:
        """Ray workers on the nodes that a finished run left behind (ray_cluster.left_by_a_run)."""
        return left_by_a_run(ray_workers(node_processes(self.dirs)))


@pytest.fixture(scope="module")
def four_nodes() -> Iterator[Nodes]:
    """A head and three worker nodes of one CPU each: four one-CPU trials at a time, one per node.
    Started with `ray start` as a user would: token authentication on (Ray's default since 2.59; the
    token is in ~/.ray/auth_token, which `ray start` creates if absent)."""
    port, client = free_port(), free_port()
    nodes = [start_node(port, head=True, cpus=1, client_port=client)]
    try:
        assert (Path.home() / ".ray" / "auth_token").is_file() or os.environ.get("RAY_AUTH_TOKEN")
        for _ in range(3):
            nodes.append(start_node(port, head=False, cpus=1))
        yield Nodes(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client}", nodes)
    finally:
        for temp_dir in reversed(nodes):
            stop_node(temp_dir)


@pytest.mark.slow
def test_notebook_that_imported_ray_first_joins_the_cluster(four_nodes: Nodes, tiny_raw, tmp_path: Path) -> None:
    raw = {**tiny_raw, "ray": {"address": four_nodes.address}}
    script = textwrap.dedent(f"""
        import os, ray                      # a notebook imports Ray before cifar_tune
        import cifar_tune.models
        from cifar_tune import run_experiment, validate_config
        assert "RAY_AUTH_MODE" not in os.environ
        outcome = run_experiment(validate_config({raw!r}), quiet=True)
        print("STATUS", list(outcome.table["status"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env=clean_env(CIFAR_TUNE_SHARED_STORAGE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STATUS ['TERMINATED']" in result.stdout


SCALE_TRIALS = 200


@pytest.mark.slow
def test_two_hundred_trials_on_four_nodes_each_recorded_once(four_nodes: Nodes, tiny_raw, tmp_path: Path) -> None:
    """The orchestration at scale (issue 22; benchmarks/scale.py measures it): 200 short trials,
    with exports and W&B offline, from the console script joining the token-auth cluster by
    host:port as a user would. Every trial in results.csv once, with the node it ran on (all four
    used), every export recorded, one W&B run per trial, nothing of the run alive on the nodes
    afterwards (the cluster itself outlives it: we joined it, we did not own it), and the analysis
    counting every trial."""
    raw = {**tiny_raw, "name": "scale", "search": {"seed": list(range(SCALE_TRIALS))},
           "data": {**tiny_raw["data"], "train_subset": 32},  # one batch: the trials are short
           "train": {**tiny_raw["train"], "epochs": 1},
           "export": {"variants": ["eager_fp32"], "batch_sizes": [1], "warmup_runs": 0, "min_runs": 1,
                      "min_duration_s": 0.0, "rounds": 1, "calibration_images": 8},
           "wandb": {"mode": "offline"}}
    path = _write(raw, tmp_path / "exp.yaml")
    # One machine, so its folder is shared by the nodes; on a real cluster: cloud or shared storage.
    result = subprocess.run([CIFAR_TUNE, "run", str(path), "--address", four_nodes.address], capture_output=True,
                            text=True, timeout=900, env=clean_env(CIFAR_TUNE_SHARED_STORAGE="1", WANDB_SILENT="true"))
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = Path(raw["storage_path"]) / "scale"
    table = pd.read_csv(experiment / "results.csv")
    assert len(table) == SCALE_TRIALS and table["trial_id"].is_unique
    assert sorted(table["seed"]) == list(range(SCALE_TRIALS)) and (table["status"] == "TERMINATED").all()
    assert table["node_id"].nunique() == 4  # every node trained
    assert table["node_ip"].notna().all() and table["hostname"].notna().all()
    exports = json.loads((experiment / "exports.json").read_text())
    assert set(exports) == set(table["trial_id"]) and {e["status"] for e in exports.values()} == {"ok"}
    assert set(pd.read_csv(experiment / "bench.csv")["trial_id"]) == set(table["trial_id"])
    assert len(list((experiment / "wandb").glob("offline-run-*"))) == SCALE_TRIALS
    deadline = time.monotonic() + 30  # Ray ends a released actor's process asynchronously
    while four_nodes.run_leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert four_nodes.run_leftovers() == {}
    status = subprocess.run([RAY, "status", f"--address={four_nodes.address}"], capture_output=True, text=True,
                            timeout=60, env=clean_env(RAY_AUTH_MODE="token"))
    assert status.returncode == 0, status.stderr
    from cifar_tune.analysis import analyze_experiment

    analysis, _ = analyze_experiment(experiment, wandb_mode="disabled")
    counted = analysis.aggregate[analysis.aggregate["metric"] == "test_acc"]
    left_out = [line for line in analysis.missing if line.startswith("trial ")]
    assert counted["n"].sum() == SCALE_TRIALS and not left_out, left_out


@pytest.mark.slow
def test_trials_joined_through_ray_client_spread_over_nodes_and_say_where_they_ran(four_nodes: Nodes, tiny_raw,
                                                                                   tmp_path: Path) -> None:
    """Through Ray Client (ray://), Tune's loop runs on the cluster (by host:port: the test above)."""
    raw = {**tiny_raw, "search": {"seed": [0, 1]}, "train": {**tiny_raw["train"], "epochs": 2}}
    path = _write(raw, tmp_path / "exp.yaml")
    result = subprocess.run([CIFAR_TUNE, "run", str(path), "--address", four_nodes.client], capture_output=True,
                            text=True, timeout=600, env=clean_env(CIFAR_TUNE_SHARED_STORAGE="1"))
    assert result.returncode == 0, result.stderr[-3000:] + four_nodes.client_server_logs()
    table = pd.read_csv(Path(raw["storage_path"]) / "tiny" / "results.csv")
    assert (table["status"] == "TERMINATED").all()
    assert table["node_id"].nunique() == 2  # the two one-CPU trials ran side by side, on two nodes
    assert table["node_ip"].notna().all() and table["hostname"].notna().all()


@pytest.mark.slow
def test_local_storage_is_refused_on_several_nodes(four_nodes: Nodes, tiny_raw, tmp_path: Path) -> None:
    path = _write(tiny_raw, tmp_path / "exp.yaml")
    result = subprocess.run([CIFAR_TUNE, "run", str(path), "--address", four_nodes.address], capture_output=True, text=True,
                            timeout=300, env=clean_env())
    assert result.returncode == 2 and "4-node cluster" in result.stderr
    assert not (Path(tiny_raw["storage_path"]) / "tiny").exists()  # the claim was released: nothing left


# What Ray Client's proxy answers when the server it started for this client died at once.
SERVER_DID_NOT_START = ("Initialization failure from server:\nRuntimeError: Starting Ray client server failed. "
                        "See ray_client_server_23000.err for detailed logs.")
# The same death, seen by the proxy between its poll() and its look at the process (CI, 2026-12-05).
SERVER_DIED_WHILE_WATCHED = ("Initialization failure from server:\nTraceback (most recent call last):\n  ...\n"
                             "psutil.ZombieProcess: PID still exists but it's a zombie (pid=7162)\n")


@pytest.mark.parametrize(("address", "error", "calls", "connects"), [
    ("ray://127.0.0.1:10001", [SERVER_DID_NOT_START] * 2, 3, True),  # a failed start is tried again
    ("ray://127.0.0.1:10001", [SERVER_DID_NOT_START] * 3, 3, False),  # but not forever
    ("ray://127.0.0.1:10001", [SERVER_DIED_WHILE_WATCHED, SERVER_DID_NOT_START], 3, True),
    ("ray://127.0.0.1:10001", ["Failed to connect within 30 seconds"], 1, False),  # nobody there: no retry
    ("127.0.0.1:6379", [SERVER_DID_NOT_START], 1, False),  # not Ray Client
])
def test_ray_client_connect_retries_only_a_failed_server_start(address: str, error: list[str], calls: int,
                                                                connects: bool, monkeypatch) -> None:
    import ray

    from cifar_tune.config import ConfigError
    from cifar_tune.orchestrator import cluster

    attempts: list[str] = []

    def init(address: str, **kwargs: Any) -> None:
        attempts.append(address)
        if len(attempts) <= len(error):
            raise ConnectionAbortedError(error[len(attempts) - 1])

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(cluster, "use_token_auth_if_available", lambda: None)
    monkeypatch.setattr(cluster.time, "sleep", lambda seconds: None)
    if connects:
        with cluster.ray_session(address):
            pass
    else:
        with pytest.raises(ConfigError, match=f"ray.address '{address}': cannot connect"), cluster.ray_session(address):
            pass
    assert attempts == [address] * calls
