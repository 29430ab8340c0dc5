"""The statistics on hand-made tables, checked against scipy and numpy computed here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cifar_tune.analysis.stats import aggregate, inference_speedups, mean_ci, original_study_table, speedup, welch

FP32 = [0.8010, 0.8050, 0.7990, 0.8030, 0.8020]
BF16 = [0.8000, 0.8040, 0.8015, 0.7985, 0.8035]
FP32_T = [2100.0, 2080.0, 2150.0, 2120.0, 2095.0]
BF16_T = [1000.0, 1010.0, 990.0, 1025.0, 1005.0]


def trials_table(fp32=FP32, bf16=BF16) -> pd.DataFrame:
    """Five seeds per precision (fewer accuracies: fewer trials), hand-made."""
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


def test_aggregate() -> None:
    agg = aggregate(trials_table(), ["precision"]).set_index(["precision", "metric"])
    assert agg.loc[("fp32", "test_acc"), "mean"] == pytest.approx(np.mean(FP32))
    assert agg.loc[("fp32", "test_acc"), "scale"] == "linear"
    time = agg.loc[("amp_bf16", "training_time_s")]
    assert time["n"] == 5 and time["scale"] == "log" and time["mean"] == pytest.approx(stats.gmean(BF16_T))


def test_intervals_stay_in_the_possible_range() -> None:
    # Two wildly different throughputs: a linear t interval would reach far below 0 img/s.
    linear, logged = mean_ci([30.0, 400.0]), mean_ci([30.0, 400.0], log=True)
    assert linear["ci_low"] < 0 < logged["ci_low"]
    log_ci = stats.t.interval(0.95, 1, loc=np.log([30, 400]).mean(), scale=stats.sem(np.log([30, 400])))
    assert (logged["ci_low"], logged["ci_high"]) == pytest.approx(tuple(np.exp(log_ci)))
    assert logged["mean"] == pytest.approx(stats.gmean([30.0, 400.0]))
    # Accuracies near the top: the interval is clipped to [0, 1].
    bounded = mean_ci([0.99, 0.995, 0.999], bounds=(0.0, 1.0))
    assert bounded["ci_high"] == 1.0 and mean_ci([0.99, 0.995, 0.999])["ci_high"] > 1.0


def test_incomplete_trials_are_left_out_of_statistics() -> None:
    trials = trials_table()
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
    ratios = np.array([2.0, 2.5, 3.0])
    assert table.loc["onnx_fp32", "speedup"] == pytest.approx(stats.gmean(ratios))  # ratios average geometrically
    low, _ = stats.t.interval(0.95, 2, loc=np.log(ratios).mean(), scale=stats.sem(np.log(ratios)))
    assert table.loc["onnx_fp32", "ci_low"] == pytest.approx(math.exp(low))
    assert table.loc["eager_fp32", "speedup"] == 1.0


def test_original_study_table_layout() -> None:
    table = original_study_table(trials_table())
    assert list(table.index) == ["Best Training Accuracy (epoch)", "Best Validation Accuracy", "Best Training Loss",
                                 "Best Validation Loss", "Training Time (s)", "Test Accuracy", "Test Time (s)"]
    assert set(table.columns) == {"fp32", "amp_bf16"}
    assert table.loc["Test Accuracy", "fp32"].startswith(f"{100 * np.mean(FP32):.2f} ± ")
    assert table.loc["Best Training Accuracy (epoch)", "fp32"].endswith("(29.0)")
