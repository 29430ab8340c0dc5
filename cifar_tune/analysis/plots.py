"""The report's PNG plots, drawn on bare matplotlib Figures (no pyplot, no backend switch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cifar_tune.analysis.stats import mean_ci


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    # A bare Figure (no pyplot): no GUI backend is chosen and no global figure list grows.
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_metric_per_precision(trials: pd.DataFrame, column: str, label: str, path: Path, scale: float = 1.0) -> Path:
    """One point per seed, the mean with its 95% interval beside it."""
    fig, ax = _figure(6, 4)
    precisions = sorted(trials["precision"].unique())
    for i, precision in enumerate(precisions):
        values = trials.loc[trials["precision"] == precision, column].dropna() * scale
        ax.scatter(np.full(len(values), i - 0.1), values, alpha=0.6, label="seeds" if i == 0 else None)
        summary = mean_ci(values)
        err = None if np.isnan(summary["ci_low"]) else [[summary["mean"] - summary["ci_low"]],
                                                         [summary["ci_high"] - summary["mean"]]]
        ax.errorbar([i + 0.1], [summary["mean"]], yerr=err, fmt="o", color="black", capsize=5,
                    label="mean, 95% CI" if i == 0 else None)
    ax.set_xticks(range(len(precisions)), precisions)
    ax.set_ylabel(label)
    ax.legend()
    return _save(fig, path)


def plot_val_curves(history: pd.DataFrame, path: Path) -> Path:
    """val_acc per epoch: mean over seeds, with a 95% band."""
    fig, ax = _figure(7, 4)
    for precision, part in history.groupby("precision"):
        rows = [dict(epoch=epoch, **mean_ci(p["val_acc"] * 100)) for epoch, p in part.groupby("epoch")]
        curve = pd.DataFrame(rows)
        ax.plot(curve["epoch"], curve["mean"], label=f"{precision} (n={int(curve['n'].max())})")
        ax.fill_between(curve["epoch"], curve["ci_low"], curve["ci_high"], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.legend()
    return _save(fig, path)


def plot_latency(bench: pd.DataFrame, path: Path) -> Path:
    """p50 latency per variant and batch size (mean over trials), log scale."""
    timed = bench.dropna(subset=["p50_ms"])
    table = timed.groupby(["variant", "batch_size"])["p50_ms"].mean().unstack("batch_size")
    fig, ax = _figure(8, 4)
    width = 0.8 / max(1, len(table.columns))
    for j, batch in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + j * width, table[batch], width, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(table)) + width * (len(table.columns) - 1) / 2, table.index, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency (ms)")
    ax.legend()
    return _save(fig, path)
