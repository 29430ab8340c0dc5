"""Faults a real user meets: two runs with one name, storage that cannot be written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cifar_tune.faults import ENV
from cifar_tune.orchestrator.cli import main

from conftest import PAUSE, inject_faults

CIFAR_TUNE = str(Path(sys.executable).parent / "cifar-tune")


def test_two_runs_with_one_name_exactly_one_runs(tiny_raw, tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1}}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runs = [subprocess.Popen([CIFAR_TUNE, "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], [err[-2000:] for _, err in outputs]
    loser = next(err for run, (_, err) in zip(runs, outputs, strict=True) if run.returncode == 2)
    assert "claimed by another run" in loser or "already exists" in loser
    table = pd.read_csv(Path(tiny_raw["storage_path"]) / "tiny" / "results.csv")
    assert len(table) == 1 and list(table["status"]) == ["TERMINATED"]  # one run's trial, not two


def test_unwritable_storage_is_refused_before_training(tiny_raw, tmp_path: Path, capsys) -> None:
    # (The tests run as root, which ignores folder permissions: a path through a file is unwritable for anyone.)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({**tiny_raw, "storage_path": str(blocker / "results")}))
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the experiment folder" in err and "storage_path" in err


def _first_epoch_reported(experiment: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.stat().st_size for p in experiment.glob("train_cifar_*/result.json")):
            return
        time.sleep(0.5)
    raise AssertionError(f"no epoch reported under {experiment} within {timeout_s} s")


def test_ctrl_c_stops_within_seconds_and_resume_continues_the_same_wandb_runs(tiny_raw, tmp_path: Path) -> None:
    raw = {**tiny_raw, "data": {**tiny_raw["data"], "train_subset": 96},
           "train": {**tiny_raw["train"], "epochs": 10}, "wandb": {"mode": "offline"}}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    experiment = Path(raw["storage_path"]) / raw["name"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_DIR")}
    run = subprocess.Popen([CIFAR_TUNE, "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**env, ENV: json.dumps(PAUSE)})  # Ctrl-C lands mid-run
    _first_epoch_reported(experiment)
    run.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    out, err = run.communicate(timeout=120)
    stopped_after = time.monotonic() - interrupted
    assert run.returncode == 130, err[-3000:]
    assert stopped_after < 30, f"the driver took {stopped_after:.0f} s to stop after Ctrl-C"
    assert f"cifar-tune resume {experiment}" in out
    assert pd.read_csv(experiment / "results.csv")["status"].tolist() == ["UNFINISHED"]

    resumed = subprocess.run([CIFAR_TUNE, "resume", str(experiment)], capture_output=True, text=True, timeout=600,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(experiment / "results.csv")
    assert table["status"].tolist() == ["TERMINATED"] and table["epochs_done"].tolist() == [10]
    # W&B: the resumed trial logs to the run of the same id (the trial id), not to a new one.
    run_ids = {d.name.rsplit("-", 1)[1] for d in (experiment / "wandb").glob("offline-run-*")}
    assert run_ids == {table["trial_id"].item()}


@pytest.mark.usefixtures("ray_for_tests")
def test_resume_from_a_truncated_checkpoint_names_the_file_and_never_restarts(tiny_raw, monkeypatch) -> None:
    from cifar_tune import resume_experiment, run_experiment, validate_config

    # Fails after epoch 2 of 3 (after its checkpoint), is not retried: resume must continue from it.
    inject_faults(monkeypatch, fail_at_epoch=2)
    raw = dict(tiny_raw)
    first = run_experiment(validate_config(raw), quiet=True)
    assert first.table["status"].tolist() == ["ERROR"]
    latest = max(Path(first.table["path"].item()).glob("checkpoint_*"))
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    resumed = resume_experiment(first.path, quiet=True)
    row = resumed.table.iloc[0]
    assert row["status"] == "ERROR" and "state.pt is unreadable" in row["error"], row["error"]
    assert row["epochs_done"] == 2  # nothing trained again from epoch 0


class _Trial:
    def __init__(self, saving: bool) -> None:
        self.is_saving = saving


def test_ctrl_c_waits_for_checkpoints_in_flight_and_a_second_one_stops_at_once(monkeypatch) -> None:
    """GracefulInterrupt with Tune's handler stood in by a recorder: the first Ctrl-C stops Tune's
    loop only at a step where no trial is saving (or after the grace period); a second stops it now."""
    from cifar_tune.orchestrator import interrupt

    before = signal.getsignal(signal.SIGINT)
    stops: list[int] = []

    def tunes_handler(signum: int, frame: object) -> None:
        stops.append(signum)

    try:
        for second_press in (False, True):
            stops.clear()
            signal.signal(signal.SIGINT, tunes_handler)
            hook = interrupt.GracefulInterrupt()
            hook.setup()
            assert signal.getsignal(signal.SIGINT) == hook._on_sigint
            hook.on_step_end(iteration=1, trials=[_Trial(saving=True)])
            assert stops == []  # no Ctrl-C yet
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            hook.on_step_end(iteration=2, trials=[_Trial(saving=True), _Trial(saving=False)])
            assert stops == []  # a checkpoint is in flight: wait
            if second_press:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
                assert stops == [signal.SIGINT]
            else:
                hook.on_step_end(iteration=3, trials=[_Trial(saving=False)])
                assert stops == [signal.SIGINT]
            assert signal.getsignal(signal.SIGINT) is tunes_handler  # Tune's handler back in place
            hook.on_step_end(iteration=4, trials=[])
            assert len(stops) == 1  # stopped once

        signal.signal(signal.SIGINT, tunes_handler)
        stops.clear()
        hook = interrupt.GracefulInterrupt()
        hook.setup()
        clock = iter([100.0, 100.0 + interrupt.GRACE_S + 1])
        monkeypatch.setattr(interrupt.time, "monotonic", lambda: next(clock))
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        hook.on_step_end(iteration=1, trials=[_Trial(saving=True)])
        assert stops == [signal.SIGINT]  # a save that never resolves holds the stop GRACE_S at most
        assert interrupt.GracefulInterrupt.__getstate__(hook) == {}  # picklable: no handler in its state
    finally:
        signal.signal(signal.SIGINT, before)
