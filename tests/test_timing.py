"""Isolated timing (`cifar-tune time`, `timing.enabled`) and the count of trials sharing a device:
the ledger's arithmetic, the summary's statistics against scipy, the choice of node and resources,
and real runs on the embedded Ray whose report then takes its speed claims from timing.csv."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cifar_tune.analysis.load import load_experiment
from cifar_tune.analysis.speed import SESSION, timing_summary, with_speed_source
from cifar_tune.analysis.summary import analyze
from cifar_tune.config import ConfigError, validate_config
from cifar_tune.data import load_data
from cifar_tune.names import SHARING_METRIC, TIMING_CSV, TIMING_ROUNDS_CSV
from cifar_tune.orchestrator.cli import main
from cifar_tune.orchestrator.experiment import run_experiment
from cifar_tune.orchestrator.timing import round_order, time_experiment, timing_resources
from cifar_tune.train import Trainer
from cifar_tune.trainables.occupancy import DeviceLedger

from conftest import ALLOW_SECOND, SECOND_PRECISION, TEST_PRECISION, inject_faults

# --------------------------------------------------------------------------- the ledger


def test_ledger_counts_the_most_trials_on_a_device_during_an_epoch() -> None:
    ledger = DeviceLedger()
    ledger.enter("a", "node1/gpu:0")
    ledger.enter("b", "node1/gpu:0")  # joins a's epoch
    ledger.enter("c", "node1/gpu:1")  # another GPU: shares with nobody
    assert ledger.leave("b") == 2
    ledger.enter("b", "node1/gpu:0")  # b's next epoch: a still there
    assert ledger.leave("a") == 2  # b left and came back during a's epoch: never more than 2 at once
    assert ledger.leave("c") == 1
    assert ledger.leave("b") == 2  # a was there when b's epoch started
    ledger.enter("b", "node1/gpu:0")
    assert ledger.leave("b") == 1  # alone now
    assert ledger.leave("never-entered") is None


def test_ledger_peak_counts_a_trial_that_came_and_went_mid_epoch() -> None:
    ledger = DeviceLedger()
    ledger.enter("long", "n/cpu")
    for other in ("x", "y"):
        ledger.enter(other, "n/cpu")
        ledger.leave(other)
    ledger.enter("x", "n/cpu")
    ledger.enter("y", "n/cpu")
    ledger.leave("x")
    ledger.leave("y")
    assert ledger.leave("long") == 3  # at one moment long, x and y were all on the CPUs


# --------------------------------------------------------------------------- the summary


def _rounds(speeds: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{SESSION: "2026-01-01T00:00:00+00:00", "round": r, "precision": p, "images_per_s": v, "device": "cpu",
             "node_id": "n", "cpus": 2.0, "gpus": 0.0, "threads": 2, "batch_size": 32, "steps": 5}
            for p, values in speeds.items() for r, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_timing_summary_median_interval_and_paired_speedup_match_textbook_values() -> None:
    fp32 = [100.0, 104.0, 98.0, 101.0, 97.0, 103.0, 99.0]
    bf16 = [190.0, 212.0, 191.0, 200.0, 188.0, 209.0, 195.0]
    summary = timing_summary(_rounds({"fp32": fp32, "amp_bf16": bf16})).set_index("precision")
    assert summary.loc["fp32", "median_images_per_s"] == 100.0 and summary.loc["fp32", "rounds"] == 7
    # n = 7 at 95%: the order-statistics interval for the median is [x(1), x(7)] (coverage 98.4%;
    # [x(2), x(6)] would cover only 87.5%).
    assert (summary.loc["fp32", "ci_low"], summary.loc["fp32", "ci_high"]) == (97.0, 104.0)
    log_ratio = np.log(np.array(bf16) / np.array(fp32))  # paired by round
    low, high = stats.t.interval(0.95, len(log_ratio) - 1, loc=log_ratio.mean(), scale=stats.sem(log_ratio))
    assert summary.loc["amp_bf16", "speedup"] == pytest.approx(math.exp(log_ratio.mean()))
    assert summary.loc["amp_bf16", "speedup_ci_low"] == pytest.approx(math.exp(low))
    assert summary.loc["amp_bf16", "speedup_ci_high"] == pytest.approx(math.exp(high))
    assert summary.loc["fp32", "speedup"] == 1.0


def test_timing_summary_gives_no_median_interval_below_six_rounds_and_no_speedup_without_fp32() -> None:
    summary = timing_summary(_rounds({"amp_bf16": [1.0, 2.0, 3.0, 4.0, 5.0]})).set_index("precision")
    assert summary.loc["amp_bf16", "median_images_per_s"] == 3.0
    assert math.isnan(summary.loc["amp_bf16", "ci_low"]) and math.isnan(summary.loc["amp_bf16", "speedup"])


def test_speed_claims_use_isolated_timing_where_there_is_some_and_say_so() -> None:
    comparison = pd.DataFrame([{"precision": "amp_bf16", "baseline": "fp32", "train_speedup": 1.2,
                                "speedup_ci_low": 1.1, "speedup_ci_high": 1.3},
                               {"precision": "tf32", "baseline": "fp32", "train_speedup": 0.9,
                                "speedup_ci_low": 0.8, "speedup_ci_high": 1.0}])
    trials = pd.DataFrame({SHARING_METRIC: [1.0, 4.0, np.nan]})
    timing = timing_summary(_rounds({"fp32": [100.0, 101.0], "amp_bf16": [200.0, 206.0]}))
    out = with_speed_source(comparison, trials, timing).set_index("precision")
    assert out.loc["amp_bf16", "train_speedup"] == pytest.approx(math.sqrt(2.0 * 206 / 101))
    assert "isolated timing" in out.loc["amp_bf16", "speedup_source"]
    assert out.loc["tf32", "train_speedup"] == 0.9  # not timed: the per-trial number, labelled as packed
    assert out.loc["tf32", "speedup_source"] == "per-trial training times, measured with up to 4 trials sharing a device"
    alone = with_speed_source(comparison, pd.DataFrame({SHARING_METRIC: [1.0]}), pd.DataFrame())
    assert alone["speedup_source"].str.contains("device to itself").all()


# --------------------------------------------------------------------------- where and how long


def _node(node_id: str, cpus: float, gpus: float = 0, alive: bool = True) -> dict[str, Any]:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}


def test_timing_takes_every_cpu_of_the_largest_node_or_a_whole_gpu(tiny_raw) -> None:
    nodes = [_node("b", 8), _node("a", 8), _node("c", 16, alive=False), _node("g", 4, gpus=1)]
    assert timing_resources(validate_config(tiny_raw), nodes) == ("a", 8, 0.0)  # ties: lowest id
    on_gpu = validate_config({**tiny_raw, "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0.25}})
    assert timing_resources(on_gpu, nodes) == ("g", 2, 1.0)
    with pytest.raises(ConfigError, match="timing.gpus"):
        timing_resources(on_gpu, [_node("a", 8)])
    with pytest.raises(ConfigError, match="timing.cpus"):
        timing_resources(validate_config({**tiny_raw, "timing": {"cpus": 32}}), nodes)


def test_timing_more_than_this_machine_has_is_refused_before_data_or_ray(tiny_raw, monkeypatch) -> None:
    import cifar_tune.orchestrator.experiment as experiment_mod
    import cifar_tune.orchestrator.timing as timing_mod

    def no_data(*_: Any) -> None:
        raise AssertionError("data loaded before the timing resources were checked")

    monkeypatch.setattr(experiment_mod, "load_data", no_data)
    monkeypatch.setattr(timing_mod, "load_data", no_data)
    too_many_cpus = validate_config({**tiny_raw, "timing": {"enabled": True, "cpus": 4096}})
    with pytest.raises(ConfigError, match=r"timing.cpus: 4096 CPUs .* this machine has"):
        run_experiment(too_many_cpus, quiet=True)
    with pytest.raises(ConfigError, match=r"timing.cpus: 4096"):  # `cifar-tune time` asks even when not enabled
        time_experiment(validate_config({**tiny_raw, "timing": {"cpus": 4096}}), quiet=True)
    if not torch.cuda.is_available():  # a GPU machine has the one GPU asked for here
        with pytest.raises(ConfigError, match=r"timing.gpus: 1 GPU .* this machine has 0"):
            run_experiment(validate_config({**tiny_raw, "timing": {"enabled": True, "gpus": 1}}), quiet=True)
    # On a cluster the nodes are known only once connected: not refused here.
    on_cluster = validate_config({**tiny_raw, "ray": {"address": "ray://127.0.0.1:1"},
                                  "timing": {"enabled": True, "cpus": 4096}})
    from cifar_tune.orchestrator.preflight import check_timing_fits

    check_timing_fits(on_cluster)


def test_every_precision_goes_first_equally_often() -> None:
    orders = [round_order(["fp32", "amp_bf16", "tf32"], r) for r in range(6)]
    assert [o[0] for o in orders] == ["fp32", "amp_bf16", "tf32"] * 2
    assert all(sorted(o) == sorted(orders[0]) for o in orders)


def test_timed_steps_report_a_speed_and_survive_a_schedule_shorter_than_them(tiny_raw) -> None:
    config = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "schedule": "onecycle", "epochs": 1}})
    trainer = Trainer(config.train, config.model, load_data(config.data))
    assert trainer.steps_per_epoch * config.train.epochs < 12  # OneCycleLR alone would refuse step 12
    result = trainer.time_steps(10, warmup_steps=2)
    assert result["steps"] == 10 and result["batch_size"] == 32
    assert result["seconds"] > 0 and result["images_per_s"] == pytest.approx(320 / result["seconds"])


def test_timing_rounds_reject_a_single_round(tiny_raw) -> None:
    with pytest.raises(ConfigError, match=r"timing\.rounds"):
        validate_config({**tiny_raw, "timing": {"rounds": 1}})


# --------------------------------------------------------------------------- on Ray


@pytest.mark.usefixtures("ray_for_tests")
def test_run_records_device_sharing_times_alone_and_the_report_uses_it(tiny_raw, monkeypatch) -> None:
    # Each epoch held open 2 s (no CPU): a trial whose worker starts seconds after the other's, as on
    # a busy machine, still shares the device with it on record (without the hold, one trial could
    # finish its 4 short epochs before the other began).
    inject_faults(monkeypatch, epoch_hold_s=2.0)
    raw = json.loads(json.dumps(tiny_raw))
    raw["search"] = {"precision": ["fp32", SECOND_PRECISION], "seed": [0]}
    raw["train"] = {**raw["train"], **ALLOW_SECOND, "epochs": 4}
    raw["timing"] = {"enabled": True, "rounds": 2, "steps": 3, "warmup_steps": 1}
    outcome = run_experiment(validate_config(raw), quiet=True)
    assert (outcome.table["status"] == "TERMINATED").all()

    # Two trials of 1 CPU each on the session's 2-CPU node: they trained side by side.
    per_epoch = [result.metrics_dataframe[SHARING_METRIC] for result in outcome.result_grid]
    assert all(set(counts) <= {1, 2} and len(counts) == 4 for counts in per_epoch)
    assert max(counts.max() for counts in per_epoch) == 2
    assert pd.read_csv(outcome.path / "results.csv")[SHARING_METRIC].max() == 2

    rounds = pd.read_csv(outcome.path / TIMING_ROUNDS_CSV)
    assert len(rounds) == 4 and set(rounds["precision"]) == {"fp32", SECOND_PRECISION}
    assert rounds["precision"].tolist()[:2] == rounds["precision"].tolist()[:1:-1]  # order rotated
    assert (rounds["cpus"] == 2).all() and (rounds["images_per_s"] > 0).all() and rounds["node_id"].nunique() == 1
    timing = pd.read_csv(outcome.path / TIMING_CSV).set_index("precision")
    ratios = rounds.pivot(index="round", columns="precision", values="images_per_s")
    assert timing.loc[SECOND_PRECISION, "speedup"] == pytest.approx(
        math.exp(np.log(ratios[SECOND_PRECISION] / ratios["fp32"]).mean()))

    analysis = analyze(load_experiment(outcome.path))
    row = analysis.comparison.iloc[0]
    assert row["train_speedup"] == pytest.approx(timing.loc[SECOND_PRECISION, "speedup"])
    assert "isolated timing" in row["speedup_source"] and "isolated timing" in analysis.conclusions[0]
    assert "up to 2 trials sharing a device" in analysis.training_times


@pytest.mark.usefixtures("ray_for_tests")
def test_time_before_the_run_then_run_in_the_same_folder(tiny_raw) -> None:
    raw = {**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1},
           "timing": {"enabled": True, "rounds": 2, "steps": 2, "warmup_steps": 0}}
    config = validate_config(raw)
    timed = time_experiment(config, quiet=True)
    assert sorted(p.name for p in Path(config.experiment_dir).iterdir()) == [TIMING_CSV, TIMING_ROUNDS_CSV]
    assert list(timed.summary["precision"]) == [TEST_PRECISION] and timed.summary["rounds"].eq(2).all()
    outcome = run_experiment(config, quiet=True)  # the folder holds only timing files: not "taken"
    assert (outcome.table["status"] == "TERMINATED").all()
    assert len(pd.read_csv(outcome.path / TIMING_ROUNDS_CSV)) == 2  # measured once, not again after the run
    assert outcome.table[SHARING_METRIC].tolist() == [1]

    # `cifar-tune time EXPERIMENT_DIR` measures again: a second session appended, timing.csv replaced.
    assert main(["time", str(outcome.path), "--set", "timing.rounds=2", "--set", "timing.steps=3"]) == 0
    again = pd.read_csv(outcome.path / TIMING_ROUNDS_CSV)
    assert len(again) == 4 and again[SESSION].nunique() == 2
    assert pd.read_csv(outcome.path / TIMING_CSV)["steps"].eq(3).all()


def test_a_timing_failure_after_the_trials_keeps_their_results(tiny_raw, tmp_path: Path, monkeypatch, capsys) -> None:
    from cifar_tune.orchestrator import experiment
    from cifar_tune.storage import Location

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConfigError("timing.gpus: 1 GPU per timing task, but no node of the cluster has that many")

    monkeypatch.setattr(experiment, "time_in_session", broken)
    config = validate_config({**tiny_raw, "timing": {"enabled": True}})
    finished = pd.DataFrame({"status": ["TERMINATED"]})
    experiment._time_if_asked(config, None, Location.of(tmp_path), finished, quiet=False)  # does not raise
    out = capsys.readouterr().out
    assert "timing failed" in out and "timing.gpus" in out and f"cifar-tune time {tmp_path}" in out
    experiment._time_if_asked(config, None, Location.of(tmp_path), pd.DataFrame({"status": ["ERROR"]}), quiet=False)
    assert "not every trial finished" in capsys.readouterr().out


def test_timing_cpus_are_checked_against_what_ray_will_see(tiny_raw, monkeypatch) -> None:
    """In a container with a CPU quota, os.cpu_count() counts the host's cores; the embedded Ray
    (and so the check) counts the quota."""
    import ray._private.utils

    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda **kwargs: 1)  # a 1-CPU quota
    with pytest.raises(ConfigError, match=r"timing.cpus: 2 CPUs per timing task, but this machine has 1"):
        run_experiment(validate_config({**tiny_raw, "timing": {"enabled": True, "cpus": 2}}), quiet=True)
