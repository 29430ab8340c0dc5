"""Every precision against fp32: paired by seed, tested for equivalence, corrected for multiplicity.

Seed k of every precision sees the same initial weights, data order and augmentation, so the
comparison is made on the per-seed differences in test accuracy (percentage points): paired-t and
bootstrap 95% intervals, TOST within `analysis.margin_pp`, a verdict (equivalent / different /
inconclusive), Holm's adjustment across a report's comparisons, the seeds the margin would need,
and McNemar's exact test on the images the two get differently. Every number comes from
scipy.stats but Holm's few lines. The method, in full: docs/analysis.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cifar_tune.analysis.stats import CONFIDENCE, NO_SPREAD, complete_trials, no_spread_limit, speedup, welch

EQUIVALENT, DIFFERENT, INCONCLUSIVE = "equivalent", "different", "inconclusive"
BOOTSTRAP_RESAMPLES = 9999
MAX_SEEDS = 1000  # seeds_for_margin gives up beyond this


def paired_difference(diffs: Any, margin: float) -> dict[str, float]:
    """Statistics of per-pair differences `diffs` (pp): n_pairs, mean_diff_pp, sd_diff_pp, the
    paired-t interval (ci_low_pp, ci_high_pp) and p-value (p_paired), the bootstrap interval
    (boot_low_pp, boot_high_pp) and the TOST p-value for +-margin (p_tost). NaN where n < 2."""
    d = pd.Series(diffs, dtype=float).dropna().to_numpy()
    n = len(d)
    out = {"n_pairs": n, "mean_diff_pp": float(d.mean()) if n else math.nan, "sd_diff_pp": math.nan,
           "ci_low_pp": math.nan, "ci_high_pp": math.nan, "p_paired": math.nan,
           "boot_low_pp": math.nan, "boot_high_pp": math.nan, "p_tost": math.nan}
    if n < 2:
        return out
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    out["sd_diff_pp"] = sd
    if sd < NO_SPREAD:  # every pair differs by the same amount (often 0: identical accuracies)
        low, high, p = no_spread_limit(mean)  # equivalence then holds exactly when the point is inside
        out.update(ci_low_pp=low, ci_high_pp=high, boot_low_pp=low, boot_high_pp=high, p_paired=p,
                   p_tost=0.0 if abs(mean) < margin else 1.0)
        return out
    test = stats.ttest_1samp(d, 0.0)
    ci = test.confidence_interval(CONFIDENCE)
    above = stats.ttest_1samp(d, -margin, alternative="greater").pvalue  # H0: mean <= -margin
    below = stats.ttest_1samp(d, margin, alternative="less").pvalue  # H0: mean >= +margin
    boot = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                           method="percentile", rng=np.random.default_rng(0)).confidence_interval
    out.update(ci_low_pp=float(ci.low), ci_high_pp=float(ci.high), p_paired=float(test.pvalue),
               boot_low_pp=float(boot.low), boot_high_pp=float(boot.high), p_tost=float(max(above, below)))
    return out


def verdict(ci_low: float, ci_high: float, margin: float) -> str:
    """`equivalent` if the interval lies inside +-margin, `different` if it excludes 0, else
    `inconclusive` (also when there is no interval)."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return INCONCLUSIVE
    if -margin < ci_low and ci_high < margin:
        return EQUIVALENT
    if ci_low > 0 or ci_high < 0:
        return DIFFERENT
    return INCONCLUSIVE


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def seeds_for_margin(sd: float, margin: float) -> float:
    """The fewest pairs whose paired-t 95% half-width, t(0.975, n-1) * sd / sqrt(n), is under
    `margin`, taking the observed sd as the truth. NaN without an sd; inf beyond MAX_SEEDS."""
    if math.isnan(sd):
        return math.nan
    for n in range(2, MAX_SEEDS + 1):
        if stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) < margin:
            return n
    return math.inf


def mcnemar(baseline_right: Any, other_right: Any) -> dict[str, float]:
    """McNemar's exact test on paired per-image correctness: baseline_only_right (b),
    other_only_right (c) and the two-sided binomial p-value of b in b + c at 1/2 (1.0 when no image
    differs)."""
    base, other = np.asarray(baseline_right, dtype=bool), np.asarray(other_right, dtype=bool)
    return mcnemar_counts(int(np.sum(base & ~other)), int(np.sum(~base & other)))


def mcnemar_counts(b: int, c: int) -> dict[str, float]:
    """McNemar's exact test from the discordant counts themselves."""
    p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    return {"baseline_only_right": b, "other_only_right": c, "mcnemar_p": float(p)}


def per_image(trials: pd.DataFrame, groups: list[str], predictions: dict[str, np.ndarray],
              baseline: str = "fp32") -> pd.DataFrame:
    """One row per precision x seed pair whose trials both saved predictions (same test images),
    then one `pooled` row per precision (seed "all") summing the discordant counts over seeds."""
    if not predictions or "trial_id" not in trials:
        return pd.DataFrame()
    done = complete_trials(trials)
    done = done[done["trial_id"].isin(list(predictions))]
    others = [g for g in groups if g not in ("precision", "seed")]
    rows = []
    for key, part in (done.groupby(others, dropna=False) if others else [((), done)]):
        key = dict(zip(others, key if isinstance(key, tuple) else (key,), strict=True))
        base = part[part["precision"] == baseline].drop_duplicates("seed").set_index("seed")["trial_id"]
        for precision, arm in part.groupby("precision"):
            if precision == baseline:
                continue
            pairs = []
            for seed, trial_id in arm.drop_duplicates("seed").set_index("seed")["trial_id"].items():
                if seed not in base.index:
                    continue
                mine, theirs = predictions[trial_id], predictions[base[seed]]
                if mine.shape != theirs.shape or not np.array_equal(mine[1], theirs[1]):
                    continue  # not the same test images: no image-by-image comparison
                pairs.append({**key, "precision": precision, "seed": seed,
                              **mcnemar(theirs[0] == theirs[1], mine[0] == mine[1])})
            if pairs:
                b = sum(p["baseline_only_right"] for p in pairs)
                c = sum(p["other_only_right"] for p in pairs)
                pooled = {**key, "precision": precision, "seed": "all", **mcnemar_counts(b, c)}
                rows += [*pairs, pooled]
    return pd.DataFrame(rows)


def compare_to_baseline(trials: pd.DataFrame, groups: list[str], baseline: str = "fp32",
                        margin: float = 0.5, predictions: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Every precision (within each combination of the other searched keys) against `baseline`,
    paired by seed on test accuracy (pp). Columns: the other keys, precision, baseline, n_pairs,
    mean_diff_pp, ci_low_pp, ci_high_pp, p_paired, p_tost, p_holm, verdict, mcnemar_p (pooled over
    seeds; NaN without saved predictions) with baseline_only_right and other_only_right (images),
    boot_low_pp, boot_high_pp, sd_diff_pp, seeds_for_margin,
    the unpaired check (n, n_baseline, welch_diff_pp, welch_low_pp, welch_high_pp, p_welch), and the
    training-time speedup with its interval (train_speedup, speedup_ci_low, speedup_ci_high)."""
    done = complete_trials(trials)
    others = [g for g in groups if g not in ("precision", "seed")]
    rows = []
    for key, part in (done.groupby(others, dropna=False) if others else [((), done)]):
        key = key if isinstance(key, tuple) else (key,)
        base = part[part["precision"] == baseline]
        base_by_seed = base.groupby("seed")["test_acc"].mean()
        for precision, arm in part.groupby("precision"):
            if precision == baseline:
                continue
            arm_by_seed = arm.groupby("seed")["test_acc"].mean()
            seeds = arm_by_seed.index.intersection(base_by_seed.index)
            paired = paired_difference(100 * (arm_by_seed[seeds] - base_by_seed[seeds]), margin)
            unpaired = welch(arm["test_acc"] * 100, base["test_acc"] * 100)
            fast = speedup(base["training_time_s"], arm["training_time_s"])
            rows.append({**dict(zip(others, key, strict=True)), "precision": precision, "baseline": baseline,
                         **{k: paired[k] for k in ("n_pairs", "mean_diff_pp", "ci_low_pp", "ci_high_pp", "p_paired",
                                                   "p_tost")},
                         "p_holm": math.nan, "verdict": verdict(paired["ci_low_pp"], paired["ci_high_pp"], margin),
                         "mcnemar_p": math.nan, "margin_pp": margin,
                         "boot_low_pp": paired["boot_low_pp"], "boot_high_pp": paired["boot_high_pp"],
                         "sd_diff_pp": paired["sd_diff_pp"],
                         "seeds_for_margin": seeds_for_margin(paired["sd_diff_pp"], margin),
                         "n": unpaired["n_a"], "n_baseline": unpaired["n_b"], "welch_diff_pp": unpaired["diff"],
                         "welch_low_pp": unpaired["ci_low"], "welch_high_pp": unpaired["ci_high"],
                         "p_welch": unpaired["p_value"], "train_speedup": fast["speedup"],
                         "speedup_ci_low": fast["ci_low"], "speedup_ci_high": fast["ci_high"]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p_paired"])
    images = per_image(trials, groups, predictions or {}, baseline)
    table["baseline_only_right"], table["other_only_right"] = math.nan, math.nan
    if not images.empty:
        pooled = images[images["seed"] == "all"].set_index([*others, "precision"])
        for column in ("mcnemar_p", "baseline_only_right", "other_only_right"):
            table[column] = [pooled[column].get(tuple(r) if len(r) > 1 else r[0], math.nan)
                             for r in table[[*others, "precision"]].itertuples(index=False, name=None)]
    return table


def _interval(low: float, high: float, fmt: str) -> str:
    return f"95% CI {format(low, fmt)} to {format(high, fmt)}"


def conclusion(row: dict[str, Any] | pd.Series, others: list[str] = ()) -> str:
    """What one comparison row supports, in words. `others`: the other searched keys in the row."""
    label = f"{row['precision']} vs {row['baseline']}"
    if others:
        label += " (" + ", ".join(f"{k}={row[k]}" for k in others) + ")"
    speed = row["train_speedup"]
    slow_fast = f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"
    training = f"training {slow_fast} (speedup {speed:.2f}x"
    training += f", {_interval(row['speedup_ci_low'], row['speedup_ci_high'], '.2f')}" \
        if not math.isnan(row["speedup_ci_low"]) else ""
    training += f"; {row['speedup_source']})" if isinstance(row.get("speedup_source"), str) else ")"
    margin = row["margin_pp"]
    if row["n_pairs"] < 2:
        return (f"{label}: test accuracy {row['mean_diff_pp']:+.2f} pp over {row['n_pairs']} seed pair(s): fewer "
                f"than 2 pairs of seeds, so no interval or test can be given; {training}")
    stats_text = (f"{_interval(row['ci_low_pp'], row['ci_high_pp'], '+.2f')} paired over {row['n_pairs']} seeds, "
                  f"p={row['p_paired']:.2g}, Holm p={row['p_holm']:.2g}, TOST p={row['p_tost']:.2g}")
    if row["verdict"] == EQUIVALENT:
        words = f"equivalent within ±{margin:g} pp"
        if row["ci_low_pp"] > 0 or row["ci_high_pp"] < 0:
            words += " (the interval excludes 0: a real difference, but smaller than the margin)"
    elif row["verdict"] == DIFFERENT:
        words = "different: " + ("lower" if row["mean_diff_pp"] < 0 else "higher") + f" than {row['baseline']}"
    else:
        needed = row["seeds_for_margin"]
        more = (f"about {needed:.0f} seeds would bring the interval within ±{margin:g} pp at this spread"
                if math.isfinite(needed) else "no practical number of seeds would, at this spread")
        words = f"inconclusive: neither within ±{margin:g} pp nor excluding 0 ({more})"
    return f"{label}: test accuracy {row['mean_diff_pp']:+.2f} pp ({stats_text}): {words}; {training}"


def image_conclusion(row: dict[str, Any] | pd.Series, baseline: str, seeds: int) -> str:
    """One pooled per-image row in words."""
    return (f"{row['precision']} vs {baseline}, image by image over {seeds} seed pair(s): {baseline} right and "
            f"{row['precision']} wrong on {row['baseline_only_right']} test images, the reverse on "
            f"{row['other_only_right']} (McNemar exact p={row['mcnemar_p']:.2g})")
