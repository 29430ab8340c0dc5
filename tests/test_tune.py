"""Real Tune experiments on an embedded Ray with tiny data: learning, results, retries, resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from ray import tune

from cifar_tune import resume_experiment, run_experiment
from cifar_tune.analysis.trials import read_trial_records
from cifar_tune.config import ConfigError, validate_config
from cifar_tune.names import BEST_FILE, EPOCH_METRICS, STATE_FILE, TEST_METRICS
from cifar_tune.orchestrator.cluster import check_storage

from conftest import ALLOW_SECOND, PAUSE, SECOND_PRECISION, TEST_PRECISION, inject_faults, tiny_config

EPOCH_KEYS = set(EPOCH_METRICS)
FINAL_KEYS = set(TEST_METRICS)
pytestmark = pytest.mark.usefixtures("ray_for_tests")
COMPARED = ["train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc", "test_loss", "test_acc"]


def _config(raw: dict[str, Any], **changes: Any):
    raw = json.loads(json.dumps(raw))
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            raw.setdefault(section, {})[key] = value
        else:
            raw[section] = value
    return validate_config(raw)


def _final_metrics(outcome, **match: Any) -> dict[str, Any]:
    for result in outcome.result_grid:
        if all(result.config["train"][k] == v for k, v in match.items()):
            return result.metrics
    raise AssertionError(f"no trial with {match}")


def _final_weights(result) -> dict[str, torch.Tensor]:
    with result.checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests: None) -> Any:
    """One uninterrupted 3-epoch trial, the reference for the resume tests."""
    raw = {**tiny_config(cifar_root, tmp_path_factory.mktemp("straight")), "name": "straight"}
    return raw, run_experiment(validate_config(raw), quiet=True)


def test_experiment_learns_and_writes_results(tiny_raw) -> None:
    config = _config(tiny_raw, search={"precision": ["fp32", SECOND_PRECISION], "seed": [0]},
                     train={**tiny_raw["train"], **ALLOW_SECOND}, model={"width": 1.0})  # the study's network
    outcome = run_experiment(config, quiet=True)
    table = outcome.table
    assert list(table["precision"]) == sorted(["fp32", SECOND_PRECISION]) and list(table["seed"]) == [0, 0]
    assert (table["status"] == "TERMINATED").all()
    assert (table["best_val_acc"] > 0.6).all(), table  # chance is 0.1
    assert table["test_acc"].notna().all() and (table["training_time_s"] > 0).all()

    on_disk = pd.read_csv(outcome.path / "results.csv")
    assert list(on_disk["precision"]) == list(table["precision"])
    # Where each trial ran: this machine, the session's one Ray node.
    import ray

    assert set(on_disk["node_id"]) == {ray.get_runtime_context().get_node_id()}
    assert on_disk["node_ip"].notna().all() and on_disk["hostname"].notna().all()
    assert (outcome.path / "cifar_tune_config.yaml").is_file()

    for result in outcome.result_grid:
        history = result.metrics_dataframe
        assert EPOCH_KEYS <= set(history.columns) and list(history["epoch"]) == [1, 2, 3]
        assert FINAL_KEYS <= set(result.metrics)
        # Three checkpoints written; the latest alone is kept, and it holds the best weights.
        assert [p.name for p in Path(result.path).glob("checkpoint_*")] == [Path(result.checkpoint.path).name]
        best = result.get_best_checkpoint("val_acc", "max")
        with best.as_directory() as folder:
            saved = torch.load(Path(folder) / BEST_FILE, weights_only=True)
        assert saved["val_acc"] == result.metrics["best_val_acc"]


@pytest.mark.parametrize(("checkpoint_every", "fail_at_epoch"), [(1, 2), (2, 1), (1, 3)])
def test_failed_trial_is_retried_from_its_checkpoint_exactly(tiny_raw, straight, monkeypatch,
                                                             checkpoint_every: int, fail_at_epoch: int) -> None:
    """checkpoint_every 1: the retry continues after the failed epoch. 2: the failure comes before
    the first checkpoint (epoch 2), so the retry replays epoch 1, to the same numbers. Failing after
    the last epoch: the retry restores the last checkpoint (weights only) and trains nothing again."""
    reference_raw, reference = straight
    inject_faults(monkeypatch, fail_at_epoch=fail_at_epoch)
    config = _config(reference_raw, name="retried", storage_path=tiny_raw["storage_path"], ray={"max_failures": 1},
                     train={**reference_raw["train"], "checkpoint_every": checkpoint_every})
    outcome = run_experiment(config, quiet=True)
    assert list(outcome.table["status"]) == ["TERMINATED"]
    got, want = outcome.result_grid[0], reference.result_grid[0]
    assert got.metrics["epoch"] == 3
    reported = [json.loads(line)["epoch"] for line in (Path(got.path) / "result.json").read_text().splitlines()]
    assert reported == ([1, 2, 3] if checkpoint_every == 1 else [1, 1, 2, 3])
    assert [row["epoch"] for row in read_trial_records(outcome.path)[0].history] == [1, 2, 3]
    assert {k: got.metrics[k] for k in COMPARED} == {k: want.metrics[k] for k in COMPARED}
    for key, value in _final_weights(want).items():
        assert torch.equal(value, _final_weights(got)[key]), key


def test_a_reused_worker_trains_the_next_trial_as_a_fresh_one_would(tiny_raw, straight) -> None:
    """reuse_actors: one trial at a time, so seed 0 runs second, in the process seed 1 used (after a
    different precision), and still ends exactly as the reference run's fresh process did."""
    reference_raw, reference = straight
    other = "fp32" if TEST_PRECISION != "fp32" else "tf32"  # tf32: fp32 math on a CPU, under other flags
    config = _config(reference_raw, name="reused", storage_path=tiny_raw["storage_path"],
                     search={"seed": [1, 0], "precision": [other, TEST_PRECISION]},
                     train={**reference_raw["train"], "allow_slow_precision": True}, tune={"max_concurrent_trials": 1})
    outcome = run_experiment(config, quiet=True)
    assert (outcome.table["status"] == "TERMINATED").all()
    assert len({r.metrics["pid"] for r in outcome.result_grid}) == 1  # one worker process took every trial
    got = _final_metrics(outcome, seed=0, precision=TEST_PRECISION)
    want = reference.result_grid[0].metrics
    assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}


def test_resume_finishes_errored_trials_and_keeps_finished_ones(tiny_raw, straight, monkeypatch) -> None:
    reference_raw, reference = straight
    # epochs=2 finishes; epochs=3 fails after epoch 2 and is not retried (max_failures 0).
    inject_faults(monkeypatch, fail_at_epoch=2)
    config = _config(reference_raw, name="interrupted", storage_path=tiny_raw["storage_path"],
                     search={"epochs": [2, 3]})
    first = run_experiment(config, quiet=True)
    assert dict(zip(first.table["epochs"], first.table["status"], strict=True)) == {2: "TERMINATED", 3: "ERROR"}
    assert "fail_at_epoch" in first.table.loc[first.table["epochs"] == 3, "error"].item()

    finished = next(r for r in first.result_grid if r.config["train"]["epochs"] == 2)
    finished_log = (Path(finished.path) / "result.json").read_text()

    resumed = resume_experiment(first.path, quiet=True)
    assert list(resumed.table["status"]) == ["TERMINATED", "TERMINATED"]
    assert (Path(finished.path) / "result.json").read_text() == finished_log  # not rerun
    got = _final_metrics(resumed, epochs=3)
    want = reference.result_grid[0].metrics
    assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}
    assert pd.read_csv(resumed.path / "results.csv")["status"].tolist() == ["TERMINATED", "TERMINATED"]


_CTRL_C = {"armed": False}  # module state, not the callback's: Tune restores its callbacks on resume


class CtrlCWhenATrialFinishes(tune.Callback):
    """Presses Ctrl-C the moment a trial's last result is logged: before Tune registers the checkpoint
    that came with it, the window in which an interrupt used to make `resume` train the trial again."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if _CTRL_C["armed"] and "test_acc" in result:
            _CTRL_C["armed"] = False
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_as_a_trial_finishes_then_resume_trains_no_finished_trial_again(tiny_raw, straight) -> None:
    reference_raw, reference = straight
    config = _config(reference_raw, name="ctrl-c", storage_path=tiny_raw["storage_path"], search={"epochs": [1, 3]})
    _CTRL_C["armed"] = True
    before = signal.getsignal(signal.SIGINT)
    first = run_experiment(config, callbacks=[CtrlCWhenATrialFinishes()], quiet=True)
    assert not _CTRL_C["armed"] and "UNFINISHED" in set(first.table["status"])  # the run was interrupted
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C acts after the run as before it
    logs = {p.parent.name: p.read_text() for p in first.path.glob("train_cifar_*/result.json")}
    finished = {name for name, text in logs.items() if '"test_acc"' in text}
    assert finished  # at least the one-epoch trial had logged its last result

    resumed = resume_experiment(first.path, quiet=True)
    assert list(resumed.table["status"]) == ["TERMINATED", "TERMINATED"]
    for name in finished:  # not trained again: its log is exactly as it was
        assert (first.path / name / "result.json").read_text() == logs[name], name
    got = _final_metrics(resumed, epochs=3)
    want = reference.result_grid[0].metrics
    assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}


def test_existing_experiment_is_never_overwritten(tiny_raw) -> None:
    config = _config(tiny_raw)
    config.experiment_dir.mkdir(parents=True)
    (config.experiment_dir / "results.csv").write_text("precious")
    with pytest.raises(ConfigError, match="already exists; resume it with"):
        run_experiment(config, quiet=True)
    assert (config.experiment_dir / "results.csv").read_text() == "precious"


def test_resume_of_a_non_experiment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a cifar-tune experiment directory"):
        resume_experiment(tmp_path)


def test_local_storage_refused_on_multi_node_cluster(tiny_raw) -> None:
    with pytest.raises(ConfigError, match=r"storage_path .*2-node cluster.*s3://"):
        check_storage(_config(tiny_raw), nodes=2)
    check_storage(_config(tiny_raw), nodes=1)
    check_storage(_config(tiny_raw, storage_path="s3://bucket/exp"), nodes=2)


def test_asha_scheduler_is_built_from_the_plan(tiny_raw, monkeypatch) -> None:
    from ray.tune.schedulers import FIFOScheduler

    from cifar_tune.orchestrator import experiment
    from cifar_tune.search import SearchPlan

    fifo = _config(tiny_raw)
    assert isinstance(experiment.make_scheduler(fifo, SearchPlan.of(fifo)), FIFOScheduler)
    monkeypatch.setattr(experiment, "ASHAScheduler", lambda **kwargs: kwargs)  # records what it was given
    asha = _config(tiny_raw, tune={"scheduler": "asha", "grace_period": 2, "reduction_factor": 2},
                   search={"epochs": [3, 8]})
    assert experiment.make_scheduler(asha, SearchPlan.of(asha)) == {
        "time_attr": "training_iteration", "max_t": 8, "grace_period": 2, "reduction_factor": 2.0}
    # A grace period past the longest trial is capped at it.
    late = _config(tiny_raw, tune={"scheduler": "asha", "grace_period": 50})
    assert experiment.make_scheduler(late, SearchPlan.of(late))["grace_period"] == 3


def test_trial_worker_killed_mid_training_is_retried_exactly(tiny_raw, straight, monkeypatch) -> None:
    """SIGKILL of the trial's worker process (as an OOM kill): Tune restarts it from its last
    checkpoint and it ends exactly where the uninterrupted run ends."""
    import signal
    import threading
    import time

    reference_raw, reference = straight
    config = _config(reference_raw, name="killed", storage_path=tiny_raw["storage_path"], ray={"max_failures": 1})
    inject_faults(monkeypatch, **PAUSE)  # a second after each epoch: the kill lands before the trial ends
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_experiment(config, quiet=True)))
    runner.start()
    # The driver logs each result at once in its staging folder (storage gets it with Tune's next
    # periodic save of the experiment state).
    import ray

    staging = Path(ray._private.worker._global_node.get_session_dir_path()) / "artifacts"
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        logs = [p for p in staging.glob("*/killed/driver_artifacts/train_cifar_*/result.json") if p.stat().st_size]
        if logs:
            first = json.loads(logs[0].read_text().splitlines()[0])
            os.kill(first["pid"], signal.SIGKILL)  # the worker that reported epoch 1, now in epoch 2
            killed = first["pid"]
        time.sleep(0.2)
    runner.join(timeout=600)
    assert killed is not None, "the trial finished before it could be killed"
    got = outcome["result"]
    assert list(got.table["status"]) == ["TERMINATED"]
    assert got.result_grid[0].metrics["pid"] != killed  # a new worker finished it
    want = reference.result_grid[0].metrics
    assert {k: got.result_grid[0].metrics[k] for k in COMPARED} == pytest.approx({k: want[k] for k in COMPARED},
                                                                                 abs=1e-6)
