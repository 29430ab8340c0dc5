"""Precisions against fp32, paired by seed, with equivalence verdicts and Holm's adjustment: checked
against scipy, formulas written out here, and a textbook Holm example, on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_stats import FP32, trials_table

from cifar_tune.analysis.compare import (
    compare_to_baseline,
    conclusion,
    holm,
    mcnemar,
    paired_difference,
    per_image,
    seeds_for_margin,
    verdict,
)

MARGIN = 0.5


def test_paired_difference_matches_scipy_and_tost_by_hand() -> None:
    fp32 = np.array([80.1, 80.5, 79.9, 80.3, 80.2])
    other = np.array([80.0, 80.6, 79.7, 80.4, 80.0])
    result = paired_difference(other - fp32, MARGIN)
    reference = stats.ttest_rel(other, fp32)
    ci = reference.confidence_interval(0.95)
    assert result["n_pairs"] == 5 and result["mean_diff_pp"] == pytest.approx(np.mean(other - fp32))
    assert result["p_paired"] == pytest.approx(reference.pvalue)
    assert (result["ci_low_pp"], result["ci_high_pp"]) == pytest.approx((ci.low, ci.high))
    # TOST written out: two one-sided t-tests against -margin and +margin, the larger p counts.
    d = other - fp32
    se = d.std(ddof=1) / math.sqrt(len(d))
    p_low = stats.t.sf((d.mean() + MARGIN) / se, len(d) - 1)
    p_high = stats.t.cdf((d.mean() - MARGIN) / se, len(d) - 1)
    assert result["p_tost"] == pytest.approx(max(p_low, p_high))
    assert result["boot_low_pp"] <= result["mean_diff_pp"] <= result["boot_high_pp"]
    assert d.min() <= result["boot_low_pp"] and result["boot_high_pp"] <= d.max()


def test_identical_accuracies_are_the_strongest_agreement_not_nan() -> None:
    result = paired_difference([0.0, 0.0, 0.0], MARGIN)
    assert result["p_paired"] == 1.0 and result["p_tost"] == 0.0
    assert (result["ci_low_pp"], result["ci_high_pp"]) == (0.0, 0.0)
    assert verdict(result["ci_low_pp"], result["ci_high_pp"], MARGIN) == "equivalent"
    shifted = paired_difference([0.8, 0.8, 0.8], MARGIN)  # every seed exactly 0.8 pp better
    assert shifted["p_paired"] == 0.0 and shifted["p_tost"] == 1.0


@pytest.mark.parametrize(("low", "high", "expected"), [
    (-0.3, 0.4, "equivalent"),
    (0.1, 0.3, "equivalent"),  # a real difference, smaller than the margin
    (-3.8, -0.2, "different"),
    (0.2, 0.9, "different"),
    (-3.8, 4.6, "inconclusive"),  # the "no detectable difference" that proves nothing
    (-0.2, 0.6, "inconclusive"),
    (math.nan, math.nan, "inconclusive"),
])
def test_verdicts(low: float, high: float, expected: str) -> None:
    assert verdict(low, high, MARGIN) == expected


def test_holm_matches_the_textbook() -> None:
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> kept monotone at 0.06.
    adjusted = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_seeds_for_margin_is_the_first_n_whose_half_width_fits() -> None:
    sd = 0.8
    n = seeds_for_margin(sd, MARGIN)
    half = lambda k: stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)  # noqa: E731
    assert half(n) < MARGIN <= half(n - 1)
    assert math.isnan(seeds_for_margin(math.nan, MARGIN))
    assert seeds_for_margin(100.0, 0.01) == math.inf


def test_pairing_by_seed_sees_what_welch_cannot() -> None:
    # fp32 accuracies spread over 2 points between seeds; the other precision is each seed's fp32
    # plus 0.1 pp, give or take 0.05: paired, clearly within the margin; unpaired, hopeless.
    fp32 = np.array([0.790, 0.800, 0.810, 0.785, 0.805])
    other = fp32 + np.array([0.0010, 0.0015, 0.0005, 0.0012, 0.0008])
    row = compare_to_baseline(trials_table(fp32=list(fp32), bf16=list(other)), ["precision"], margin=MARGIN).iloc[0]
    assert row["n_pairs"] == 5 and row["verdict"] == "equivalent"
    assert row["welch_high_pp"] - row["welch_low_pp"] > 10 * (row["ci_high_pp"] - row["ci_low_pp"])
    assert verdict(row["welch_low_pp"], row["welch_high_pp"], MARGIN) == "inconclusive"
    assert row["p_welch"] == pytest.approx(stats.ttest_ind(other * 100, fp32 * 100, equal_var=False).pvalue)
    assert "equivalent within ±0.5 pp" in conclusion(row)


def test_only_seeds_present_in_both_arms_are_paired() -> None:
    trials = trials_table()
    trials = trials.drop(trials.index[(trials["precision"] == "amp_bf16") & (trials["seed"] == 4)])
    row = compare_to_baseline(trials, ["precision"]).iloc[0]
    assert row["n_pairs"] == 4 and row["n"] == 4 and row["n_baseline"] == 5


def test_holm_runs_across_every_comparison_of_the_table() -> None:
    rows = []
    for precision, shift in (("fp32", 0.0), ("amp_bf16", -0.008), ("amp_fp16", 0.0002), ("tf32", -0.03)):
        for seed, base in enumerate(FP32):
            noise = 0.0005 * ((seed * 7 + len(precision)) % 3 - 1) if precision != "fp32" else 0.0
            rows.append({"precision": precision, "seed": seed, "test_acc": base + shift + noise,
                         "training_time_s": 100.0 + seed, "complete": True})
    table = compare_to_baseline(pd.DataFrame(rows), ["precision"])
    assert list(table["precision"]) == ["amp_bf16", "amp_fp16", "tf32"]
    assert table["p_holm"].to_numpy() == pytest.approx(holm(table["p_paired"]))
    assert (table["p_holm"] >= table["p_paired"]).all()
    assert dict(zip(table["precision"], table["verdict"], strict=True)) == {
        "amp_bf16": "different", "amp_fp16": "equivalent", "tf32": "different"}


def test_the_original_studys_single_runs_give_no_verdict() -> None:
    # One run per arm, 3.5 points apart: the original study's evidence for "AMP costs 3.5 points".
    row = compare_to_baseline(trials_table(fp32=FP32[:1], bf16=[FP32[0] - 0.035]), ["precision"]).iloc[0]
    assert row["n_pairs"] == 1 and row["verdict"] == "inconclusive" and math.isnan(row["p_paired"])
    assert "fewer than 2 pairs of seeds, so no interval or test can be given" in conclusion(row)


def test_an_inconclusive_verdict_says_how_many_seeds_would_settle_it() -> None:
    noisy = [a + d for a, d in zip(FP32, [0.006, -0.008, 0.004, -0.002, 0.009], strict=True)]
    row = compare_to_baseline(trials_table(bf16=noisy), ["precision"]).iloc[0]
    assert row["verdict"] == "inconclusive"
    text = conclusion(row)
    assert f"about {row['seeds_for_margin']:.0f} seeds would bring the interval within ±0.5 pp" in text
    assert row["seeds_for_margin"] > 5


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    # 10 images only fp32 gets right, 2 only the other: two-sided exact p = 2 * P(X <= 2 | 12, 1/2).
    base = np.r_[np.ones(10, bool), np.zeros(2, bool), np.ones(50, bool), np.zeros(8, bool)]
    other = np.r_[np.zeros(10, bool), np.ones(2, bool), np.ones(50, bool), np.zeros(8, bool)]
    result = mcnemar(base, other)
    assert (result["baseline_only_right"], result["other_only_right"]) == (10, 2)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar(base, base)["mcnemar_p"] == 1.0  # no image differs: nothing against agreement


def test_per_image_pairs_seeds_and_pools_them() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200).astype(np.uint8)
    trials, predictions = [], {}
    for precision, wrong_from in (("fp32", 0), ("amp_bf16", 20)):
        for seed in range(3):
            predicted = labels.copy()
            predicted[wrong_from + seed: wrong_from + seed + 10] += 1  # 10 wrong images, shifted per arm and seed
            trial_id = f"{precision}-{seed}"
            predictions[trial_id] = np.stack([predicted % 10, labels])
            trials.append({"trial_id": trial_id, "precision": precision, "seed": seed, "complete": True,
                           "test_acc": 0.95, "training_time_s": 10.0 + seed})
    images = per_image(pd.DataFrame(trials), ["precision"], predictions)
    per_seed, pooled = images[images["seed"] != "all"], images[images["seed"] == "all"].iloc[0]
    assert len(per_seed) == 3 and (per_seed["baseline_only_right"] == 10).all() and (per_seed["other_only_right"] == 10).all()
    assert (pooled["baseline_only_right"], pooled["other_only_right"]) == (30, 30) and pooled["mcnemar_p"] == 1.0
    row = compare_to_baseline(pd.DataFrame(trials), ["precision"], predictions=predictions).iloc[0]
    assert row["mcnemar_p"] == 1.0 and row["baseline_only_right"] == 30


def test_onnx_int8_rows_of_both_weight_ranges_are_named() -> None:
    from cifar_tune.analysis.summary import int8_mix

    rows = [{"variant": "onnx_int8", "int8_weight_bits": 7}, {"variant": "onnx_int8", "int8_weight_bits": 8},
            {"variant": "onnx_int8", "int8_weight_bits": 8}, {"variant": "eager_fp32", "int8_weight_bits": None}]
    note = int8_mix(pd.DataFrame(rows))
    assert note and "7-bit: 1 row(s), 8-bit: 2 row(s)" in note
    assert int8_mix(pd.DataFrame(rows[1:])) is None  # one range
    assert int8_mix(pd.DataFrame([{"variant": "onnx_int8", "p50_ms": 1.0}])) is None  # written before the column
    assert int8_mix(pd.DataFrame()) is None
