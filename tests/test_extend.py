"""`cifar-tune extend`: new seeds for an experiment that already ran, merged into its analysis and
results.csv; `--until-margin` stops as soon as the intervals are narrow enough, or at --max-seeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cifar_tune.analysis import analyze_experiment, load_experiment
from cifar_tune.orchestrator import extend as extend_mod
from cifar_tune.orchestrator.cli import main

from conftest import ALLOW_SECOND, SECOND_PRECISION, inject_faults, tiny_config


@pytest.fixture(scope="module")
def two_arms_run(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests) -> Path:
    """fp32 and a second precision, seeds 0 and 1, one epoch: run once for the module."""
    raw = tiny_config(cifar_root, tmp_path_factory.mktemp("two-arms") / "results")
    raw = {**raw, "train": {**raw["train"], "epochs": 1, **ALLOW_SECOND},
           "search": {"precision": ["fp32", SECOND_PRECISION], "seed": [0, 1]}}
    config = Path(raw["storage_path"]).parent / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config)]) == 0
    return Path(raw["storage_path"]) / "tiny"


@pytest.fixture
def two_arms(two_arms_run: Path, tmp_path: Path) -> Path:
    """A copy of the module's run for each test to extend (a moved experiment extends as in place)."""
    copy = tmp_path / "results" / "tiny"
    shutil.copytree(two_arms_run, copy)
    return copy


def test_extend_adds_new_seeds_that_the_analysis_merges(two_arms: Path, capsys) -> None:
    assert main(["extend", str(two_arms), "--seeds", "1"]) == 0
    assert (two_arms / "extend-1" / "cifar_tune_config.yaml").is_file()
    saved = yaml.safe_load((two_arms / "extend-1" / "cifar_tune_config.yaml").read_text())
    assert saved["search"] == {"precision": ["fp32", SECOND_PRECISION], "seed": [2]}  # the rest of the grid kept

    exp = load_experiment(two_arms)
    assert len(exp.trials) == 6 and sorted(set(exp.trials["seed"])) == [0, 1, 2]
    assert len(exp.predictions) == 6
    results = pd.read_csv(two_arms / "results.csv")
    assert len(results) == 6 and (results["status"] == "TERMINATED").all()
    analysis, _ = analyze_experiment(two_arms, wandb_mode="disabled")
    assert analysis.comparison["n_pairs"].tolist() == [3]

    assert main(["extend", str(two_arms), "--seeds", "1"]) == 0  # the next one continues the seeds
    assert sorted(set(load_experiment(two_arms).trials["seed"])) == [0, 1, 2, 3]
    assert (two_arms / "extend-2").is_dir()


def test_until_margin_needs_three_pairs_and_stops_when_narrow_enough_or_at_max_seeds(two_arms: Path, capsys,
                                                                                    monkeypatch) -> None:
    """Holds whatever the arms score on this CPU: two pairs never end the loop, three within ±100 pp do
    (as a measured width, or as identical results where every pair scored the same)."""
    capsys.readouterr()
    assert main(["extend", str(two_arms), "--until-margin", "--margin", "100", "--max-seeds", "2"]) == 0
    assert "stopped at --max-seeds 2: 2 seed pair(s), and an interval needs at least 3" in capsys.readouterr().out
    assert not (two_arms / "extend-1").exists()

    assert main(["extend", str(two_arms), "--until-margin", "--margin", "100", "--seeds", "1", "--max-seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 seeds: 2 seed pair(s), and an interval needs at least 3; adding 1" in out
    assert "within ±100 pp with 3 seeds" in out or "identical results on all 3 seed pairs" in out
    assert sorted(set(load_experiment(two_arms).trials["seed"])) == [0, 1, 2]

    real = extend_mod.analyze

    def wider(*args, **kwargs):  # seeds that disagree by a point: too wide for a tiny margin
        analysis = real(*args, **kwargs)
        analysis.comparison["ci_low_pp"] -= 0.5
        analysis.comparison["ci_high_pp"] += 0.5
        return analysis

    monkeypatch.setattr(extend_mod, "analyze", wider)
    assert main(["extend", str(two_arms), "--until-margin", "--margin", "0.0001", "--max-seeds", "3"]) == 0
    assert "stopped at --max-seeds 3: largest half-width" in capsys.readouterr().out


def test_an_interval_of_zero_width_is_reported_as_identical_results(two_arms: Path, monkeypatch) -> None:
    """Every pair scoring the same (tf32 and fp32 on a CPU) is no measured width."""
    real = extend_mod.analyze

    def identical(*args, **kwargs):
        analysis = real(*args, **kwargs)
        analysis.comparison["n_pairs"] = 3
        analysis.comparison[["mean_diff_pp", "ci_low_pp", "ci_high_pp"]] = 0.0
        return analysis

    monkeypatch.setattr(extend_mod, "analyze", identical)
    lines = extend_mod.extend_until_margin(two_arms, step=1, max_seeds=5, quiet=True)
    assert lines == [lines[-1]] and "identical results on all 3 seed pairs" in lines[-1]
    assert "half-width" not in lines[-1]


def test_extend_refuses_while_the_last_extension_is_unfinished(two_arms: Path, capsys, monkeypatch) -> None:
    failing = yaml.safe_load((two_arms / "cifar_tune_config.yaml").read_text())
    (two_arms / "cifar_tune_config.yaml").write_text(yaml.safe_dump({**failing, "train": {**failing["train"], "epochs": 2}}))
    inject_faults(monkeypatch, fail_at_epoch=1)
    assert main(["extend", str(two_arms), "--seeds", "1"]) == 1  # its trials failed, as injected
    capsys.readouterr()
    assert main(["extend", str(two_arms), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cifar-tune resume {two_arms / 'extend-1'}" in err and "has not finished" in err


def test_extensions_exports_join_the_deployment_tables(tiny_raw, tmp_path: Path, ray_for_tests) -> None:
    """Each extension writes its own bench.csv and exports.json (extend-<k>/); the analysis of the
    experiment reads them with the original's, so no extension trial shows as "not exported"."""
    export = {"enabled": True, "batch_sizes": [1], "warmup_runs": 1, "min_runs": 2, "min_duration_s": 0.0,
              "end_to_end": False, "variants": ["eager_fp32"]}
    raw = {**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1, "precision": "fp32"}, "export": export,
           "search": {"seed": [0]}}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config)]) == 0
    experiment = Path(tiny_raw["storage_path"]) / "tiny"
    assert main(["extend", str(experiment), "--seeds", "1"]) == 0
    assert (experiment / "extend-1" / "bench.csv").is_file()

    exp = load_experiment(experiment)
    trial_ids = set(exp.trials["trial_id"])
    assert len(trial_ids) == 2 and set(exp.bench["trial_id"]) == trial_ids
    assert set(exp.exports) == trial_ids and all(e["status"] == "ok" for e in exp.exports.values())
    analysis, _ = analyze_experiment(experiment, wandb_mode="disabled")
    assert not [m for m in analysis.missing if "export" in m], analysis.missing
