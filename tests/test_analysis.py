"""`cifar-tune analyze` on real (tiny) experiments: report, plots, CSVs; partial experiments too."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cifar_tune import run_experiment
from cifar_tune.analysis.load import load_experiment
from cifar_tune.config import validate_config
from cifar_tune.orchestrator.cli import main

from conftest import ALLOW_SECOND, FAST_VARIANTS, SECOND_PRECISION, TINY_MODEL, inject_faults

pytestmark = pytest.mark.usefixtures("ray_for_tests")
# The fast variants but ONNX's (its exporter takes seconds per trial; tests/test_export.py and the
# old experiments of tests/test_compat.py bring ONNX rows to the analysis).
QUICK_EXPORT = {"enabled": True, "batch_sizes": [1, 4], "warmup_runs": 1, "min_runs": 2, "min_duration_s": 0.0,
                "calibration_images": 64, "end_to_end": False,
                "variants": [v for v in FAST_VARIANTS if not v.startswith("onnx")]}


def _png_ok(path: Path) -> None:
    assert path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300


@pytest.fixture(scope="module")
def smoke(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests: None) -> Path:
    raw = {
        "name": "smoke", "storage_path": str(tmp_path_factory.mktemp("analysis")),
        "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 128},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.02, "eval_batch_size": 200, **ALLOW_SECOND},
        "model": TINY_MODEL,
        "search": {"precision": ["fp32", SECOND_PRECISION], "seed": [0, 1]},
        "resources": {"cpus_per_trial": 1}, "export": QUICK_EXPORT, "wandb": {"mode": "disabled"},
    }
    return run_experiment(validate_config(raw), quiet=True).path


def test_loading_gives_tidy_tables(smoke: Path) -> None:
    exp = load_experiment(smoke)
    assert len(exp.trials) == 4 and exp.trials["complete"].all()
    assert set(exp.trials["precision"]) == {"fp32", SECOND_PRECISION} and exp.group_columns == ["precision"]
    assert len(exp.history) == 8 and {"epoch", "val_acc", "train_loss", "seed"} <= set(exp.history.columns)
    assert not exp.bench.empty and {"variant", "p50_ms", "precision", "seed"} <= set(exp.bench.columns)
    # Every finished trial saved its test predictions; they give back its test accuracy exactly.
    assert set(exp.predictions) == set(exp.trials["trial_id"])
    for _, trial in exp.trials.iterrows():
        predicted, true = exp.predictions[trial["trial_id"]]
        assert (predicted == true).mean() == pytest.approx(trial["test_acc"], abs=1e-6)


def test_analyze_writes_report_plots_and_csvs(smoke: Path, capsys) -> None:
    assert main(["analyze", str(smoke)]) == 0
    assert f"{SECOND_PRECISION} vs fp32: test accuracy" in capsys.readouterr().out
    out = smoke / "analysis"
    report = (out / "report.md").read_text()
    for heading in ("## Conclusions", "## The original study's table", "## Against the fp32 baseline",
                    "## Image by image", "## Inference speedup over eager fp32"):
        assert heading in report
    assert "Best Training Accuracy (epoch)" in report and "paired over 2 seeds" in report
    assert "image by image over 2 seed pair(s)" in report and "McNemar exact p=" in report
    for name in ("test_acc.png", "training_time.png", "val_acc.png", "latency.png", "speedup_vs_accuracy.png"):
        _png_ok(out / name)
        assert f"]({name})" in report
    for name in ("trials.csv", "history.csv", "aggregate.csv", "comparison.csv", "original_study_table.csv",
                 "inference_speedups.csv", "per_image.csv"):
        assert len(pd.read_csv(out / name)) > 0, name
    comparison = pd.read_csv(out / "comparison.csv")
    assert {"precision", "n_pairs", "mean_diff_pp", "ci_low_pp", "ci_high_pp", "p_paired", "p_tost", "p_holm",
            "verdict", "mcnemar_p"} <= set(comparison.columns)
    assert comparison["mcnemar_p"].between(0, 1).all() and comparison["n_pairs"].tolist() == [2]
    speedups = pd.read_csv(out / "inference_speedups.csv")
    assert (speedups.loc[speedups["variant"] == "eager_fp32", "speedup"] == 1.0).all()


def test_analyze_a_partial_experiment_says_what_is_missing(tiny_raw, tmp_path: Path, monkeypatch) -> None:
    inject_faults(monkeypatch, fail_at_epoch=2)
    raw = {**tiny_raw, "search": {"epochs": [2, 3]}}
    path = run_experiment(validate_config(raw), quiet=True).path
    # The data has moved away since: analysis reads the experiment's files alone.
    saved = path / "cifar_tune_config.yaml"
    saved.write_text(saved.read_text().replace(tiny_raw["data"]["root"], str(tmp_path / "moved-away")))
    out = tmp_path / "report"
    assert main(["analyze", str(path), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "is ERROR after 2 epoch(s)" in report and "fail_at_epoch" in report
    assert "no export results" in report
    assert "nothing to compare" in report  # the tiny config trains one precision only
    _png_ok(out / "val_acc.png")


def test_analyze_rejects_a_non_experiment(tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(tmp_path)]) == 2
    assert "not a cifar-tune experiment directory" in capsys.readouterr().err
