"""The statistics on hand-made tables, checked against scipy and numpy computed here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cifar_tune.analysis.stats import (
    aggregate,
    compare_to_baseline,
    conclusion,
    inference_speedups,
    mean_ci,
    original_study_table,
    speedup,
    welch,
)

FP32 = [0.8010, 0.8050, 0.7990, 0.8030, 0.8020]
BF16 = [0.8000, 0.8040, 0.8015, 0.7985, 0.8035]
FP32_T = [2100.0, 2080.0, 2150.0, 2120.0, 2095.0]
BF16_T = [1000.0, 1010.0, 990.0, 1025.0, 1005.0]


def _trials(fp32=FP32, bf16=BF16) -> pd.DataFrame:
    rows = []
    for precision, accs, times in (("fp32", fp32, FP32_T), ("amp_bf16", bf16, BF16_T)):
        for seed, (acc, t) in enumerate(zip(accs, times, strict=False)):  # fewer accuracies: fewer trials
            rows.append({"precision": precision, "seed": seed, "test_acc": acc, "best_val_acc": acc + 0.01,
                         "training_time_s": t, "train_images_per_s": 45000 * 30 / t, "complete": True,
                         "best_train_acc": acc + 0.1, "best_train_acc_epoch": 29, "best_train_loss": 0.5,
                         "best_val_loss": 0.6, "test_time_s": 1.5})
    return pd.DataFrame(rows)


def test_mean_ci_matches_scipy() -> None:
    summary = mean_ci(FP32)
    low, high = stats.t.interval(0.95, len(FP32) - 1, loc=np.mean(FP32), scale=stats.sem(FP32))
    assert summary["n"] == 5 and summary["mean"] == pytest.approx(np.mean(FP32))
    assert summary["std"] == pytest.approx(np.std(FP32, ddof=1))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high))
    one = mean_ci([0.8])
    assert one["n"] == 1 and math.isnan(one["ci_low"]) and math.isnan(one["std"])


def test_welch_matches_scipy_and_the_textbook_formula() -> None:
    a, b = np.array(BF16) * 100, np.array(FP32) * 100
    result = welch(a, b)
    assert result["p_value"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # Welch-Satterthwaite by hand
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * math.sqrt(va + vb)
    diff = a.mean() - b.mean()
    assert result["diff"] == pytest.approx(diff)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((diff - half, diff + half))


def test_speedup_is_a_ratio_of_geometric_means() -> None:
    result = speedup(FP32_T, BF16_T)
    assert result["speedup"] == pytest.approx(stats.gmean(FP32_T) / stats.gmean(BF16_T))
    assert result["ci_low"] < result["speedup"] < result["ci_high"]
    log_test = stats.ttest_ind(np.log(FP32_T), np.log(BF16_T), equal_var=False).confidence_interval(0.95)
    assert result["ci_low"] == pytest.approx(math.exp(log_test.low))


def test_aggregate_and_compare() -> None:
    trials = _trials()
    agg = aggregate(trials, ["precision"]).set_index(["precision", "metric"])
    assert agg.loc[("fp32", "test_acc"), "mean"] == pytest.approx(np.mean(FP32))
    assert agg.loc[("amp_bf16", "training_time_s"), "n"] == 5

    comparison = compare_to_baseline(trials, ["precision"])
    assert list(comparison["precision"]) == ["amp_bf16"]
    row = comparison.iloc[0]
    assert row["test_acc_diff_pp"] == pytest.approx(100 * (np.mean(BF16) - np.mean(FP32)))
    text = conclusion(row)
    assert text.startswith("amp_bf16 vs fp32: test accuracy -0.05 pp (95% CI")
    assert "no detectable difference" in text and "n=5+5" in text and "x faster" in text


def test_a_real_difference_is_called_significant() -> None:
    worse = [a - 0.035 for a in FP32]  # the original study's -3.5 points, but now with 5 seeds
    row = compare_to_baseline(_trials(bf16=worse), ["precision"]).iloc[0]
    assert row["p_value"] < 0.001 and row["diff_ci_high"] < 0
    assert "significantly lower" in conclusion(row)


def test_one_seed_per_arm_says_no_interval() -> None:
    row = compare_to_baseline(_trials(fp32=FP32[:1], bf16=BF16[:1]), ["precision"]).iloc[0]
    assert math.isnan(row["p_value"])
    assert "fewer than 2 seeds per arm, so no interval or test can be given" in conclusion(row)


def test_incomplete_trials_are_left_out_of_statistics() -> None:
    trials = _trials()
    trials.loc[0, "complete"] = False
    trials.loc[0, "test_acc"] = 0.1
    agg = aggregate(trials, ["precision"]).set_index(["precision", "metric"])
    assert agg.loc[("fp32", "test_acc"), "n"] == 4
    assert agg.loc[("fp32", "test_acc"), "mean"] == pytest.approx(np.mean(FP32[1:]))


def test_inference_speedups_per_trial_ratio() -> None:
    rows = []
    for trial, eager, onnx in (("a", 4.0, 2.0), ("b", 5.0, 2.0), ("c", 4.5, 1.5)):
        rows += [{"trial_id": trial, "precision": "fp32", "variant": "eager_fp32", "batch_size": 1,
                  "p50_ms": eager, "parity": "ok"},
                 {"trial_id": trial, "precision": "fp32", "variant": "onnx_fp32", "batch_size": 1,
                  "p50_ms": onnx, "parity": "ok"}]
    table = inference_speedups(pd.DataFrame(rows)).set_index("variant")
    ratios = [2.0, 2.5, 3.0]
    assert table.loc["onnx_fp32", "speedup"] == pytest.approx(np.mean(ratios))
    low, _ = stats.t.interval(0.95, 2, loc=np.mean(ratios), scale=stats.sem(ratios))
    assert table.loc["onnx_fp32", "ci_low"] == pytest.approx(low)
    assert table.loc["eager_fp32", "speedup"] == 1.0


def test_original_study_table_layout() -> None:
    table = original_study_table(_trials())
    assert list(table.index) == ["Best Training Accuracy (epoch)", "Best Validation Accuracy", "Best Training Loss",
                                 "Best Validation Loss", "Training Time (s)", "Test Accuracy", "Test Time (s)"]
    assert set(table.columns) == {"fp32", "amp_bf16"}
    assert table.loc["Test Accuracy", "fp32"].startswith(f"{100 * np.mean(FP32):.2f} ± ")
    assert table.loc["Best Training Accuracy (epoch)", "fp32"].endswith("(29.0)")
