"""Storage: local folders and cloud URIs through one `Location`, and whole experiments on S3 (a
local S3-compatible server started by the tests, moto's server mode): everything cifar-tune writes
lands in the bucket, `resume` and `analyze` take the s3:// URI, the claim of a name is atomic
there too, a bucket that does not exist is refused before any training, and the credentials are
written nowhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from ray_cluster import clean_env, free_port, node_processes, ray_workers, start_node, stop_node, submit_job
from s3_server import SECRET, client, object_keys, objects, s3_env, s3_server

from cifar_tune.orchestrator.cli import main
from cifar_tune.storage import Location

from conftest import FAST_VARIANTS, PAUSE

CIFAR_TUNE = str(Path(sys.executable).parent / "cifar-tune")
ROOT = Path(__file__).resolve().parent.parent
QUICK_EXPORT = {"enabled": True, "cpus": 1, "batch_sizes": [2], "warmup_runs": 1, "min_runs": 3, "min_duration_s": 0.0,
                "calibration_images": 64, "end_to_end": False, "variants": FAST_VARIANTS}


# --------------------------------------------------------------------------- Location, on local disk


def test_local_location_reads_writes_claims_and_copies(tmp_path: Path) -> None:
    folder = Location.of(tmp_path / "exp")
    assert folder.is_local and folder.uri == str(tmp_path / "exp") and folder.listdir() == []
    folder.create_exclusive("claim.yaml", "one")
    with pytest.raises(FileExistsError):
        folder.create_exclusive("claim.yaml", "two")
    assert folder.read_text("claim.yaml") == "one"
    (folder / "trial" / "checkpoint_000001").write_text("model.pt", "weights")
    folder.write_csv("trial/table.csv", pd.DataFrame({"a": [1, 2]}))
    assert folder.listdir() == ["claim.yaml", "trial"]
    assert folder.read_csv("trial/table.csv")["a"].tolist() == [1, 2]
    assert folder.read_csv("absent.csv").empty

    copy = folder.download(tmp_path / "copy", keep=lambda rel: "checkpoint_" not in rel)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == ["claim.yaml", "trial/table.csv"]
    (Location.of(tmp_path / "uploaded")).upload(copy)
    assert (tmp_path / "uploaded" / "trial" / "table.csv").is_file()


# --------------------------------------------------------------------------- a local S3 server


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server() as endpoint:
        client(endpoint).create_bucket(Bucket="bars")
        yield endpoint


@pytest.fixture
def aws(s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in s3_env(s3).items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.mark.slow
def test_s3_claim_is_atomic_and_an_endpoint_in_the_uri_works(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env(s3).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from the URI alone
    uri = f"s3://bars/claims?endpoint_override={s3}"
    folder = Location.of(uri)
    assert folder.uri == uri and (folder / "x").uri == f"s3://bars/claims/x?endpoint_override={s3}"

    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def claim(n: int) -> None:
        barrier.wait()
        try:
            folder.create_exclusive("config.yaml", f"writer {n}")
            outcomes.append("won")
        except FileExistsError:
            outcomes.append("lost")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    assert folder.read_text("config.yaml").startswith("writer ")
    assert folder.listdir() == ["config.yaml"]


@pytest.mark.slow
def test_a_bucket_that_does_not_exist_is_refused_before_training(aws: str, tiny_raw, tmp_path: Path, capsys) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**tiny_raw, "storage_path": "s3://no-such-bucket/studies"}))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "storage_path 's3://no-such-bucket/studies'" in err and "cannot write the experiment folder" in err


def _run(args: list[str], endpoint: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([CIFAR_TUNE, *args], capture_output=True, text=True, timeout=900, cwd=cwd,
                            env=clean_env(**s3_env(endpoint), **env))
    return result


def _csv(endpoint: str, key: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(objects(endpoint, "bars", key)[key]))


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_an_experiment_on_s3_resumes_from_its_uri_and_writes_everything_to_the_bucket(
        aws: str, tiny_raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Both trials fail after their first epoch (injected); `cifar-tune resume s3://...` finishes
    them from their checkpoints in the bucket. Then everything the two runs wrote is in the
    bucket, nothing on the driver's disk, the credentials nowhere, and the analysis reads the
    bucket. (One experiment for all of it: each CLI run here starts its own Ray.)"""
    raw: dict[str, Any] = {**tiny_raw, "storage_path": "s3://bars/studies", "search": {"seed": [0, 1]},
                           "train": {**tiny_raw["train"], "epochs": 2}, "export": QUICK_EXPORT,
                           "wandb": {"mode": "offline"}}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    work, wandb_dir = tmp_path / "work", tmp_path / "wandb-files"
    work.mkdir()
    first = _run(["run", str(config)], aws, work, WANDB_DIR=str(wandb_dir),
                 CIFAR_TUNE_FAULTS=json.dumps({"fail_at_epoch": 1}))
    assert first.returncode == 1, first.stderr[-3000:]  # both trials failed after epoch 1, as injected
    assert list(_csv(aws, "studies/tiny/results.csv")["status"]) == ["ERROR", "ERROR"]

    resumed = _run(["resume", "s3://bars/studies/tiny"], aws, work, WANDB_DIR=str(wandb_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "results: s3://bars/studies/tiny/results.csv" in resumed.stdout

    stored = objects(aws, "bars", "studies/tiny/")
    names = {key.removeprefix("studies/tiny/") for key in stored}
    assert {"cifar_tune_config.yaml", "results.csv", "bench.csv", "exports.json"} <= names
    table = pd.read_csv(io.BytesIO(stored["studies/tiny/results.csv"]))
    assert list(table["seed"]) == [0, 1] and (table["status"] == "TERMINATED").all()
    assert list(table["epochs_done"]) == [2, 2]
    assert all(path.startswith("s3://bars/studies/tiny/train_cifar_") for path in table["path"])
    exports = json.loads(stored["studies/tiny/exports.json"])
    assert sorted(e["status"] for e in exports.values()) == ["ok", "ok"]
    for trial in (path.removeprefix("s3://bars/") for path in table["path"]):
        for name in ("parity.json", "bench.json", "model.onnx", "model.int8.onnx"):
            assert f"{trial}/export/{name}" in stored, f"{trial}/export/{name} missing"
        # Two epochs, two checkpoints; the older one deleted from the bucket (orchestrator/retention.py).
        kept = {key.split("/")[len(trial.split("/"))] for key in stored if key.startswith(f"{trial}/checkpoint_")}
        assert kept == {"checkpoint_000001"}, kept
    assert list(work.iterdir()) == []  # nothing on the driver's disk: no ./results
    # W&B keeps its files on local disk (WANDB_DIR here): one offline run per trial, which its
    # resumed trial logged to again (the run's id is the trial's)
    run_ids = {d.name.rsplit("-", 1)[1] for d in wandb_dir.glob("wandb/offline-run-*")}
    assert run_ids == set(table["trial_id"])
    # The credentials are nowhere: not in the bucket, not in W&B's files, not in the working folder.
    written = {**stored, **_files_under(wandb_dir), **_files_under(work)}
    assert not [key for key, content in written.items() if SECRET.encode() in content]

    # Analysis reads the bucket and writes its report back there, or to --out. (In this process:
    # it starts no Ray, and the `aws` fixture gave this process the bucket's credentials.)
    monkeypatch.chdir(work)
    capsys.readouterr()
    assert main(["analyze", "s3://bars/studies/tiny", "--wandb-mode", "disabled"]) == 0
    assert "report: s3://bars/studies/tiny/analysis/report.md" in capsys.readouterr().out
    report = objects(aws, "bars", "studies/tiny/analysis/")["studies/tiny/analysis/report.md"].decode()
    assert "s3://bars/studies/tiny" in report and "Trials: 2" in report
    assert main(["analyze", "s3://bars/studies/tiny", "--out", str(tmp_path / "report"), "--wandb-mode", "disabled"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()

    # The name is taken now: a second run is refused before it trains, and nothing is lost.
    assert main(["run", str(config)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert objects(aws, "bars", "studies/tiny/results.csv") == {"studies/tiny/results.csv": stored["studies/tiny/results.csv"]}
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_ray_job_submit_to_two_nodes_with_storage_on_s3(s3: str, tiny_raw, tmp_path: Path) -> None:
    """The README's `ray job submit --working-dir .` on a two-node token-auth cluster whose nodes
    have the storage's credentials in their environment (as cloud nodes have them from a role).
    The nodes share one Ray temp dir, as two `ray start` on one machine do by default: there the
    worker node's runtime-env agent deletes the job's unpacked working dir, the driver's working
    directory, while the job runs; Tuner.fit then failed at its end (os.getcwd() in Ray's storage
    listing) until the driver's loop ran from a folder that stays."""
    port, dashboard = free_port(), free_port()
    nodes = [start_node(port, head=True, cpus=1, dashboard_port=dashboard, env=s3_env(s3))]
    try:
        start_node(port, head=False, cpus=1, env=s3_env(s3), temp_dir=nodes[0])
        raw = {**tiny_raw, "storage_path": "s3://bars/job", "search": {"seed": [0, 1]},
               "train": {**tiny_raw["train"], "epochs": 2}}
        config = tmp_path / "exp.yaml"
        config.write_text(yaml.safe_dump(raw))
        result = submit_job(dashboard, ROOT, [CIFAR_TUNE, "run", str(config)])
        assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, \
            (result.stdout + result.stderr)[-3000:]
        table = _csv(s3, "job/tiny/results.csv")
        assert (table["status"] == "TERMINATED").all() and table["node_id"].nunique() == 2  # both nodes trained
    finally:
        for temp_dir in reversed(nodes):
            stop_node(temp_dir)


def _checkpointed_trials(endpoint: str, prefix: str) -> set[str]:
    """Trial folders with a checkpoint in the bucket. A trial uploads each checkpoint itself as it
    reports; its result.json reaches the bucket only with Tune's periodic save, seconds later (on a
    busy machine, after a ten-epoch trial may have ended)."""
    return {parts[i - 1] for parts in (key.split("/") for key in object_keys(endpoint, "bars", prefix))
            for i, part in enumerate(parts) if i > 0 and part.startswith("checkpoint_")}


def _trial_running_on(node: str) -> bool:
    """Whether a trial's worker (Tune's ray::ImplicitFunc actor) is alive on this node."""
    return any(title.startswith("ray::ImplicitFunc") for title in ray_workers(node_processes([node])))


@pytest.mark.slow
def test_a_worker_node_lost_mid_trial_the_trial_finishes_on_the_other(s3: str, tiny_raw, tmp_path: Path,
                                                                     ray_for_tests) -> None:
    """Two one-CPU nodes train one trial each; the worker node's raylet is SIGKILLed while they
    train. Its trial is retried from its last checkpoint in the bucket, on the head, and both end
    with exactly the metrics of an uninterrupted run."""
    from cifar_tune import run_experiment, validate_config

    raw = {**tiny_raw, "search": {"seed": [0, 1]}, "train": {**tiny_raw["train"], "epochs": 10},
           "ray": {"max_failures": 2}}
    baseline = run_experiment(validate_config(raw), quiet=True).table.set_index("seed")

    port = free_port()
    head = start_node(port, head=True, cpus=1, env=s3_env(s3))
    worker = None
    try:
        worker = start_node(port, head=False, cpus=1, env=s3_env(s3))
        config = tmp_path / "exp.yaml"
        config.write_text(yaml.safe_dump({**raw, "storage_path": "s3://bars/nodeloss"}))
        run = subprocess.Popen([CIFAR_TUNE, "run", str(config), "--address", f"127.0.0.1:{port}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env(**s3_env(s3), CIFAR_TUNE_FAULTS=json.dumps(PAUSE)))  # time to kill
        deadline = time.monotonic() + 300
        # Both trials checkpointed and one still training on the worker node: two one-CPU trials
        # that run at once run one on each node, and the worker's has a checkpoint to go on from.
        while len(_checkpointed_trials(s3, "nodeloss/tiny/")) < 2 or not _trial_running_on(worker):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:] if run.stderr else ""
            time.sleep(0.3)
        raylet = subprocess.run(["pgrep", "-f", f"raylet.*{worker}"], capture_output=True, text=True).stdout.split()
        assert raylet, "the worker node's raylet was not found"
        subprocess.run(["kill", "-9", *raylet], check=True)
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    finally:
        if worker:
            stop_node(worker)
        stop_node(head)

    table = _csv(s3, "nodeloss/tiny/results.csv").set_index("seed")
    assert (table["status"] == "TERMINATED").all()
    assert table["node_id"].nunique() == 1  # the last epochs of both ran on the surviving node
    for column in ("best_val_acc", "test_acc", "test_loss", "best_epoch"):
        assert table[column].to_numpy() == pytest.approx(baseline.loc[table.index, column].to_numpy(), abs=1e-6), column


def test_tunes_loop_runs_from_a_folder_that_outlives_a_deleted_job_dir(tmp_path: Path, monkeypatch) -> None:
    """Under `ray job submit` another node's runtime-env agent may delete the driver's working dir
    (see the job-submit test): before Tune starts, or while it runs. Either way Tune's loop needs a
    working directory that exists (Ray's cloud-storage listing calls os.getcwd())."""
    import tempfile

    from cifar_tune.orchestrator.experiment import _cwd_that_outlives_the_job

    job_dir = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    with _cwd_that_outlives_the_job():
        assert os.getcwd() == tempfile.gettempdir()
    assert Path(os.getcwd()) == job_dir  # restored while it exists

    job_dir.rmdir()  # deleted before Tune even started
    with _cwd_that_outlives_the_job():
        assert os.getcwd() == tempfile.gettempdir()

    elsewhere = tmp_path / "a-project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with _cwd_that_outlives_the_job():
        assert Path(os.getcwd()) == elsewhere  # an ordinary working directory is left alone
