"""Seeds aggregated into estimates with error bars (the comparisons of precisions: compare.py).

All intervals are 95%. Means get Student-t intervals; differences get Welch's t-test (unequal
variances) and its interval; speedups are ratios of geometric means, with the interval from
Welch's t on log times, exponentiated. Everything comes from scipy.stats, imported where a test runs
(a second of start-up that `cifar-tune run` skips unless it prints deployment speedups).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cifar_tune.names import REFERENCE_VARIANT

CONFIDENCE = 0.95
AGGREGATED = ["best_val_acc", "test_acc", "training_time_s", "train_images_per_s", "images_per_j"]


def complete_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials statistics may use: finished, with test metrics."""
    return trials[trials["complete"]] if "complete" in trials else trials


def mean_ci(values: Any, log: bool = False, bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """n, mean, std and the Student-t 95% interval of the mean (NaN with fewer than 2 values).

    `log`: for positive quantities (times, throughputs, ratios): `mean` is the geometric mean and
    the interval is computed on the log scale and exponentiated, so it can never reach 0 or below.
    `bounds`: an interval for a bounded quantity (an accuracy) is clipped to them."""
    x = pd.Series(values, dtype=float).dropna().to_numpy()
    if log:
        x = np.log(x[x > 0])
    n = len(x)
    out = {"n": n, "mean": float(np.mean(x)) if n else np.nan, "std": float(np.std(x, ddof=1)) if n > 1 else np.nan,
           "ci_low": np.nan, "ci_high": np.nan}
    if n > 1:
        from scipy import stats

        sem = stats.sem(x)
        low, high = stats.t.interval(CONFIDENCE, n - 1, loc=out["mean"], scale=sem) if sem > 0 else (out["mean"],) * 2
        out["ci_low"], out["ci_high"] = float(low), float(high)
    if log:  # back from the log scale; std stays that of the log values (a geometric spread)
        out.update(mean=float(np.exp(out["mean"])), ci_low=float(np.exp(out["ci_low"])),
                   ci_high=float(np.exp(out["ci_high"])))
    if bounds is not None and n > 1:
        out["ci_low"], out["ci_high"] = float(np.clip(out["ci_low"], *bounds)), float(np.clip(out["ci_high"], *bounds))
    return out


# How each aggregated metric is summarized: accuracies are bounded to [0, 1]; times and throughputs
# are positive, so their mean is geometric and their interval multiplicative (never below 0).
METRIC_SCALE: dict[str, dict[str, Any]] = {
    "best_val_acc": {"bounds": (0.0, 1.0)},
    "test_acc": {"bounds": (0.0, 1.0)},
    "training_time_s": {"log": True},
    "train_images_per_s": {"log": True},
    "images_per_j": {"log": True},
}


def aggregate(trials: pd.DataFrame, groups: list[str], metrics: list[str] = AGGREGATED) -> pd.DataFrame:
    """One row per group x metric over the complete trials: n, mean, std, ci_low, ci_high, and
    `scale` ("linear", or "log": a geometric mean with a multiplicative interval)."""
    done = complete_trials(trials)
    rows = []
    for key, part in done.groupby(groups, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            if metric not in part or part[metric].isna().all():
                continue  # e.g. energy, where the hardware did not tell
            options = METRIC_SCALE.get(metric, {})
            rows.append({**dict(zip(groups, key, strict=True)), "metric": metric, **mean_ci(part[metric], **options),
                         "scale": "log" if options.get("log") else "linear"})
    return pd.DataFrame(rows)


NO_SPREAD = 1e-9  # below this, a spread (or a difference) in points or fractions is rounding


def no_spread_limit(diff: float) -> tuple[float, float, float]:
    """(ci_low, ci_high, p) of a difference measured with no spread at all, where the t statistic
    is undefined: the interval is the point, a zero difference is the strongest possible
    agreement (p = 1), any other is certain (p = 0)."""
    return diff, diff, 1.0 if abs(diff) < NO_SPREAD else 0.0


def welch(a: Any, b: Any) -> dict[str, float]:
    """mean(a) - mean(b), its 95% interval and the two-sided p-value of Welch's t-test."""
    a, b = pd.Series(a, dtype=float).dropna().to_numpy(), pd.Series(b, dtype=float).dropna().to_numpy()
    out = {"n_a": len(a), "n_b": len(b), "diff": float(np.mean(a) - np.mean(b)) if len(a) and len(b) else np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan}
    if len(a) > 1 and len(b) > 1 and np.ptp(a) < NO_SPREAD and np.ptp(b) < NO_SPREAD:
        out["ci_low"], out["ci_high"], out["p_value"] = no_spread_limit(out["diff"])
    elif len(a) > 1 and len(b) > 1:
        from scipy import stats

        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(CONFIDENCE)
        out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(test.pvalue))
    return out


def speedup(baseline_times: Any, times: Any) -> dict[str, float]:
    """How many times faster `times` are than `baseline_times`: a ratio of geometric means, with
    its 95% interval (Welch on log times, exponentiated)."""
    base = np.log(pd.Series(baseline_times, dtype=float).dropna().to_numpy())
    new = np.log(pd.Series(times, dtype=float).dropna().to_numpy())
    result = welch(base, new)
    return {"n_base": result["n_a"], "n": result["n_b"], "speedup": float(np.exp(result["diff"])),
            "ci_low": float(np.exp(result["ci_low"])), "ci_high": float(np.exp(result["ci_high"]))}


def inference_speedups(bench: pd.DataFrame) -> pd.DataFrame:
    """Inference speedup over eager fp32, the one definition the report and the end-of-run summary
    share; per trained precision, variant and batch size, with the precision's mean accuracy change
    and whether every trial passed parity.

    Rows timed once for the whole run (this version: they carry `speedup`, the ratio of eager fp32's
    p50 to the variant's in the same session, with a bootstrap interval) give that timing, the newest
    where an extension timed again; `n` is its run count. Rows timed in each trial's export (before)
    give the geometric mean of the per-trial ratios and its 95% CI (log scale) across trials."""
    if bench.empty or "p50_ms" not in bench:
        return pd.DataFrame()
    timed = bench.dropna(subset=["p50_ms"])
    timed = timed.assign(precision=timed["precision"] if "precision" in timed else "all")
    once = timed["speedup"].notna() if "speedup" in timed else pd.Series(False, index=timed.index)
    eager = timed[~once & (timed["variant"] == REFERENCE_VARIANT)].set_index(["trial_id", "batch_size"])["p50_ms"]
    per_trial = timed[~once].join(eager.rename("eager_p50_ms"), on=["trial_id", "batch_size"])
    per_trial = per_trial.assign(trial_speedup=per_trial["eager_p50_ms"] / per_trial["p50_ms"])
    rows = []
    for (precision, variant, batch), part in timed.groupby(["precision", "variant", "batch_size"]):
        shared = part[once.loc[part.index]]
        if not shared.empty:
            newest = shared.iloc[-1]
            summary = {"mean": newest["speedup"], "ci_low": newest["speedup_ci_low"],
                       "ci_high": newest["speedup_ci_high"], "n": newest["runs"]}
            p50 = newest["p50_ms"]
        else:
            summary = mean_ci(per_trial.loc[part.index, "trial_speedup"], log=True)
            p50 = part["p50_ms"].mean()
        rows.append({"precision": precision, "variant": variant, "batch_size": batch,
                     "p50_ms": p50, "speedup": summary["mean"], "ci_low": summary["ci_low"],
                     "ci_high": summary["ci_high"], "n": summary["n"],
                     "accuracy_change_pp": part["accuracy_change_pp"].mean() if "accuracy_change_pp" in part else np.nan,
                     "parity_ok": bool((part["parity"] == "ok").all())})
    return pd.DataFrame(rows)


def fastest_variants(bench: pd.DataFrame) -> pd.DataFrame:
    """Per trained precision: the parity-checked variant with the largest inference speedup (as
    `inference_speedups` defines it) at the smallest and at the largest batch size."""
    speedups = inference_speedups(bench)
    if speedups.empty:
        return pd.DataFrame()
    ok = speedups[speedups["parity_ok"] & speedups["speedup"].notna()]
    rows = []
    for precision, part in ok.groupby("precision"):
        row: dict[str, Any] = {"precision": precision}
        for label, batch in (("batch 1", part["batch_size"].min()), ("largest batch", part["batch_size"].max())):
            best = part[part["batch_size"] == batch].sort_values("speedup", kind="stable").iloc[-1]
            row[f"fastest, {label} ({batch})"] = best["variant"]
            row[f"speedup, {label}"] = best["speedup"]
        rows.append(row)
    return pd.DataFrame(rows)


ORIGINAL_ROWS = [
    ("Best Training Accuracy (epoch)", "best_train_acc", 100, ".2f"),
    ("Best Validation Accuracy", "best_val_acc", 100, ".2f"),
    ("Best Training Loss", "best_train_loss", 1, ".4f"),
    ("Best Validation Loss", "best_val_loss", 1, ".4f"),
    ("Training Time (s)", "training_time_s", 1, ".1f"),
    ("Test Accuracy", "test_acc", 100, ".2f"),
    ("Test Time (s)", "test_time_s", 1, ".3f"),
]


def original_study_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The original study's table from our data: one column per precision, each cell mean +- CI
    half-width over seeds (accuracies in %)."""
    done = complete_trials(trials)
    columns = {}
    for precision, part in done.groupby("precision"):
        cells = {}
        for label, column, scale, fmt in ORIGINAL_ROWS:
            summary = mean_ci(part[column] * scale)
            half = (summary["ci_high"] - summary["ci_low"]) / 2
            cell = format(summary["mean"], fmt) + ("" if np.isnan(half) else f" ± {format(half, fmt)}")
            if column == "best_train_acc":
                cell += f" ({part['best_train_acc_epoch'].mean():.1f})"
            cells[label] = cell
        columns[precision] = cells
    return pd.DataFrame(columns)
