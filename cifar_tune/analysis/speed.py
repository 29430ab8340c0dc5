"""Isolated training speed: per precision, images/s measured with the device to itself.

`cifar-tune time` (orchestrator/timing.py) writes one row per timed block to timing_rounds.csv:
every round times each precision once, one after another on the same device, so the rows of one
round were measured minutes apart under the same conditions. This module turns them into
timing.csv, the numbers the report's training-speed claims use:

- per precision, the median img/s over rounds with a distribution-free 95% interval for the median
  (order statistics; empty below 6 rounds, with the count shown);
- the speedup over the baseline, paired by round: the geometric mean of the per-round ratios with a
  Student-t 95% interval on the log scale (so it never reaches 0).

It also labels per-trial training times with how packed they were (names.SHARING_METRIC).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from cifar_tune.analysis.stats import mean_ci
from cifar_tune.meters import median_interval
from cifar_tune.names import SHARING_METRIC

SESSION = "measured_at"  # timing_rounds.csv: when that `cifar-tune time` started (ISO 8601, UTC)
TIMING_COLUMNS = ["precision", "rounds", "median_images_per_s", "ci_low", "ci_high", "speedup", "speedup_ci_low",
                  "speedup_ci_high", "baseline", "median_images_per_j", "energy_source", "device", "node_id", "cpus",
                  "gpus", "threads", "batch_size", "steps", SESSION]


def latest_session(rounds: pd.DataFrame) -> pd.DataFrame:
    """The rows of the newest `cifar-tune time` in timing_rounds.csv (earlier ones are kept there)."""
    if rounds.empty:
        return rounds
    return rounds[rounds[SESSION] == rounds[SESSION].max()]


def timing_summary(rounds: pd.DataFrame, baseline: str = "fp32") -> pd.DataFrame:
    """timing.csv from one session's rows: one row per precision (columns TIMING_COLUMNS)."""
    if rounds.empty:
        return pd.DataFrame(columns=TIMING_COLUMNS)
    per_round = rounds.pivot_table(index="round", columns="precision", values="images_per_s")
    rows = []
    for precision, part in rounds.groupby("precision", sort=False):
        low, high = median_interval(part["images_per_s"])
        row: dict[str, Any] = {"precision": precision, "rounds": len(part),
                               "median_images_per_s": float(part["images_per_s"].median()), "ci_low": low,
                               "ci_high": high, "baseline": baseline}
        if baseline in per_round and precision != baseline:
            ratios = (per_round[precision] / per_round[baseline]).dropna()  # same round: paired
            ratio = mean_ci(ratios, log=True)
            row.update(speedup=ratio["mean"], speedup_ci_low=ratio["ci_low"], speedup_ci_high=ratio["ci_high"])
        elif precision == baseline:
            row.update(speedup=1.0, speedup_ci_low=1.0, speedup_ci_high=1.0)
        energy = pd.to_numeric(part.get("images_per_j", pd.Series(dtype=float)), errors="coerce")
        row["median_images_per_j"] = float(energy.median()) if energy.notna().any() else math.nan
        first = part.iloc[0]
        row.update({k: first.get(k) for k in TIMING_COLUMNS if k not in row and k in first})
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=TIMING_COLUMNS)


def packing(trials: pd.DataFrame) -> float:
    """The most trials that shared a device during any epoch of these trials (NaN: not recorded)."""
    if SHARING_METRIC not in trials:
        return math.nan
    return float(pd.to_numeric(trials[SHARING_METRIC], errors="coerce").max())


def packing_note(k: float) -> str:
    """How per-trial times were measured, given `packing`'s k."""
    if math.isnan(k):
        return "how many trials shared a device was not recorded"
    if k <= 1:
        return "each trial with its device to itself"
    return f"measured with up to {k:.0f} trials sharing a device"


def packing_label(k: float) -> str:
    return f"per-trial training times, {packing_note(k)}"


def with_speed_source(comparison: pd.DataFrame, trials: pd.DataFrame, timing: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with its training speedups taken from isolated timing where timing.csv
    has the precision and the baseline (else left as per-trial times), and `speedup_source` saying
    which: a speed claim must say how it was measured."""
    if comparison.empty:
        return comparison
    out = comparison.copy()
    out["speedup_source"] = packing_label(packing(trials))
    timed = timing.set_index("precision") if not timing.empty else pd.DataFrame()
    for index, row in out.iterrows():
        if row["precision"] in timed.index and row["baseline"] in timed.index:
            measured = timed.loc[row["precision"]]
            out.loc[index, ["train_speedup", "speedup_ci_low", "speedup_ci_high"]] = [
                measured["speedup"], measured["speedup_ci_low"], measured["speedup_ci_high"]]
            out.loc[index, "speedup_source"] = (f"isolated timing (timing.csv: {measured['rounds']:.0f} rounds, "
                                                f"device to itself, {measured['device']})")
    return out
