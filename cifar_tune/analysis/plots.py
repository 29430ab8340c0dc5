"""The report's PNG plots, drawn on bare matplotlib Figures (no pyplot, no backend switch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cifar_tune.analysis.stats import mean_ci

# One colour per precision, here and in the W&B dashboard (analysis/dashboard.py); matplotlib's first four.
PRECISION_COLORS = {"fp32": "#1f77b4", "tf32": "#ff7f0e", "amp_fp16": "#2ca02c", "amp_bf16": "#d62728"}


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    # A bare Figure (no pyplot): no GUI backend is chosen and no global figure list grows.
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_metric_per_precision(trials: pd.DataFrame, column: str, label: str, path: Path, scale: float = 1.0,
                              log: bool = False, bounds: tuple[float, float] | None = None) -> Path:
    """One point per seed, the mean with its 95% interval beside it (`log`, `bounds`: as mean_ci's)."""
    fig, ax = _figure(6, 4)
    precisions = sorted(trials["precision"].unique())
    for i, precision in enumerate(precisions):
        values = trials.loc[trials["precision"] == precision, column].dropna() * scale
        ax.scatter(np.full(len(values), i - 0.1), values, alpha=0.6, label="seeds" if i == 0 else None,
                   color=PRECISION_COLORS.get(precision))
        summary = mean_ci(values, log=log, bounds=bounds)
        err = None if np.isnan(summary["ci_low"]) else [[summary["mean"] - summary["ci_low"]],
                                                         [summary["ci_high"] - summary["mean"]]]
        ax.errorbar([i + 0.1], [summary["mean"]], yerr=err, fmt="o", color="black", capsize=5,
                    label=("geometric mean" if log else "mean") + ", 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(precisions)), precisions)
    ax.set_ylabel(label)
    ax.legend()
    return _save(fig, path)


def plot_val_curves(history: pd.DataFrame, path: Path) -> Path:
    """val_acc per epoch: mean over seeds, with a 95% band."""
    fig, ax = _figure(7, 4)
    for precision, part in history.groupby("precision"):
        rows = [dict(epoch=epoch, **mean_ci(p["val_acc"] * 100, bounds=(0, 100))) for epoch, p in part.groupby("epoch")]
        curve = pd.DataFrame(rows)
        color = PRECISION_COLORS.get(precision)
        ax.plot(curve["epoch"], curve["mean"], label=f"{precision} (n={int(curve['n'].max())})", color=color)
        ax.fill_between(curve["epoch"], curve["ci_low"], curve["ci_high"], alpha=0.2, color=color)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.legend()
    return _save(fig, path)


def plot_latency(bench: pd.DataFrame, path: Path) -> Path:
    """p50 latency as points with 95% intervals, log scale, variants sorted by speed at the largest
    batch, one marker per batch size, plain millisecond labels. Timed once for the run: one panel,
    the order-statistics interval of that timing; timed per trial (before): one panel per trained
    precision, the geometric mean across trials."""
    timed = bench.dropna(subset=["p50_ms"])
    timed = timed.assign(precision=timed["precision"] if "precision" in timed else "all")
    once = timed["speedup"].notna() if "speedup" in timed else pd.Series(False, index=timed.index)
    if once.any():  # timed once for every trial (bench.time_export): one panel, the timing's own intervals
        timed = timed[once].drop_duplicates(["variant", "batch_size"], keep="last").assign(precision="every")
    precisions = sorted(timed["precision"].unique())
    batches = sorted(timed["batch_size"].unique())
    fig = Figure(figsize=(8, 1.2 + 0.45 * timed["variant"].nunique() * len(precisions)))
    axes = np.atleast_1d(fig.subplots(len(precisions), 1, sharex=True, squeeze=False)[:, 0])
    for ax, precision in zip(axes, precisions, strict=True):
        part = timed[timed["precision"] == precision]
        order = part[part["batch_size"] == batches[-1]].groupby("variant")["p50_ms"].median().sort_values()
        variants = list(order.index) + sorted(set(part["variant"]) - set(order.index))
        for j, batch in enumerate(batches):
            for i, variant in enumerate(variants):
                cell = part[(part["variant"] == variant) & (part["batch_size"] == batch)]
                if once.any() and not cell.empty:
                    summary = {"n": 1, "mean": cell["p50_ms"].iloc[0], "ci_low": cell["p50_ci_low_ms"].iloc[0],
                               "ci_high": cell["p50_ci_high_ms"].iloc[0]}
                else:
                    summary = mean_ci(cell["p50_ms"], log=True)
                if summary["n"] == 0:
                    continue
                err = None if np.isnan(summary["ci_low"]) else [[summary["mean"] - summary["ci_low"]],
                                                                 [summary["ci_high"] - summary["mean"]]]
                ax.errorbar([summary["mean"]], [i + (j - (len(batches) - 1) / 2) * 0.2], xerr=err, fmt="os^Dv"[j % 5],
                            color=f"C{j}", capsize=3, label=f"batch {batch}" if i == 0 else None)
        ax.set_yticks(range(len(variants)), variants)
        ax.invert_yaxis()  # fastest on top
        ax.set_title("every trained precision: latency does not depend on the weights" if precision == "every"
                     else f"trained in {precision}", fontsize=10)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[-1].set_xlabel("p50 latency (ms), one timing with its 95% CI" if once.any()
                        else "p50 latency (ms), geometric mean over trials with 95% CI")
    return _save(fig, path)


def plot_speedup_vs_accuracy(speedups: pd.DataFrame, path: Path) -> Path:
    """What each deployment form costs: per trained precision, every variant's inference speedup
    over eager fp32 (largest batch, geometric mean over trials, 95% CI) against its test-accuracy
    change in points; open markers failed their parity tolerance."""
    precisions = sorted(speedups["precision"].unique())
    fig = Figure(figsize=(5 * len(precisions), 4))
    axes = np.atleast_1d(fig.subplots(1, len(precisions), sharey=True, squeeze=False)[0])
    for ax, precision in zip(axes, precisions, strict=True):
        part = speedups[speedups["precision"] == precision]
        part = part[part["batch_size"] == part["batch_size"].max()]
        for i, row in enumerate(part.itertuples(index=False)):
            err = None if np.isnan(row.ci_low) else [[row.speedup - row.ci_low], [row.ci_high - row.speedup]]
            ax.errorbar([row.accuracy_change_pp], [row.speedup], yerr=err, fmt="o", color=f"C{i % 10}", capsize=3,
                        markerfacecolor=None if row.parity_ok else "white")
            ax.annotate(row.variant, (row.accuracy_change_pp, row.speedup), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"trained in {precision}, batch {int(part['batch_size'].max())}", fontsize=10)
        ax.set_xlabel("test accuracy change vs eager fp32 (pp)")
    axes[0].set_ylabel("inference speedup over eager fp32")
    return _save(fig, path)
