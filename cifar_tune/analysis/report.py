"""The local report: `cifar-tune analyze EXPERIMENT_DIR` writes report.md, PNG plots and a CSV of
every table into `<experiment dir>/analysis/` (or --out). Needs no account and no network.

It works on whatever the experiment has: one trial, errored or unfinished trials, no export
results; and it says what is missing rather than leaving a blank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cifar_tune.analysis.load import Experiment, load_experiment  # noqa: E402
from cifar_tune.analysis.stats import (aggregate, compare_to_baseline, complete_trials, conclusion,  # noqa: E402
                                       inference_speedups, mean_ci, original_study_table)

ANALYSIS_DIR = "analysis"


@dataclass
class Analysis:
    """Every table of the report, as DataFrames, plus the sentences and what is missing."""

    experiment: Experiment
    aggregate: pd.DataFrame
    comparison: pd.DataFrame
    original: pd.DataFrame
    inference: pd.DataFrame
    conclusions: list[str]
    missing: list[str] = field(default_factory=list)


def analyze(experiment: Experiment, baseline: str = "fp32") -> Analysis:
    trials, groups = experiment.trials, experiment.group_columns
    missing = []
    if trials.empty:
        missing.append("the experiment has no trials yet")
    done = complete_trials(trials)
    not_done = trials.drop(done.index)
    for _, row in not_done.iterrows():
        why = f": {row['error']}" if row["error"] else ""
        missing.append(f"trial {row['trial_id']} ({row['precision']}, seed {row['seed']}) is {row['status']} after "
                       f"{row['epochs_done']} epoch(s){why}; left out of the statistics")
    agg = aggregate(trials, groups) if not done.empty else pd.DataFrame()
    comparison = compare_to_baseline(trials, groups, baseline) if not done.empty else pd.DataFrame()
    if not done.empty and baseline not in set(done["precision"]):
        missing.append(f"no finished {baseline} trial: nothing to compare the other precisions with")
    others = [g for g in groups if g != "precision"]
    conclusions = [conclusion(row, others) for _, row in comparison.iterrows()]
    if experiment.bench.empty:
        missing.append("no export results (bench.csv): export.enabled was off, or no export finished")
    return Analysis(experiment, agg, comparison, original_study_table(trials) if not done.empty else pd.DataFrame(),
                    inference_speedups(experiment.bench), conclusions, missing)


# --------------------------------------------------------------------------- plots


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metric_per_precision(trials: pd.DataFrame, column: str, label: str, path: Path, scale: float = 1.0) -> Path:
    """One point per seed, the mean with its 95% interval beside it."""
    fig, ax = plt.subplots(figsize=(6, 4))
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
    fig, ax = plt.subplots(figsize=(7, 4))
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
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(table.columns))
    for j, batch in enumerate(table.columns):
        ax.bar(np.arange(len(table)) + j * width, table[batch], width, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(table)) + width * (len(table.columns) - 1) / 2, table.index, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("p50 latency (ms)")
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------- report


def _markdown(table: pd.DataFrame, index: bool = False, floats: str = "{:.4g}") -> str:
    if table.empty:
        return "(none)\n"
    frame = table.reset_index() if index else table
    fmt = lambda v: floats.format(v) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_report(analysis: Analysis, out: Path) -> dict[str, Path]:
    """report.md, the plots and a CSV per table in `out`; returns {name: path} of what it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    exp = analysis.experiment
    done = complete_trials(exp.trials)
    written: dict[str, Path] = {}
    tables = {"trials": exp.trials, "history": exp.history, "aggregate": analysis.aggregate,
              "comparison": analysis.comparison, "original_study_table": analysis.original,
              "inference_speedups": analysis.inference}
    for name, table in tables.items():
        if not table.empty:
            written[f"{name}.csv"] = out / f"{name}.csv"
            table.to_csv(written[f"{name}.csv"], index=name == "original_study_table")

    plots = []
    if not done.empty:
        written["test_acc.png"] = plot_metric_per_precision(done, "test_acc", "test accuracy (%)",
                                                            out / "test_acc.png", 100)
        written["training_time.png"] = plot_metric_per_precision(done, "training_time_s", "training time (s)",
                                                                 out / "training_time.png")
        plots += [("Test accuracy per precision", "test_acc.png"), ("Training time per precision", "training_time.png")]
    if not exp.history.empty:
        written["val_acc.png"] = plot_val_curves(exp.history, out / "val_acc.png")
        plots.append(("Validation accuracy per epoch", "val_acc.png"))
    if not exp.bench.empty and "p50_ms" in exp.bench:
        written["latency.png"] = plot_latency(exp.bench, out / "latency.png")
        plots.append(("Inference latency per variant and batch size", "latency.png"))

    counts = exp.trials["status"].value_counts().to_dict() if not exp.trials.empty else {}
    parts = [
        f"# Analysis of `{exp.path.name}`\n",
        f"Experiment directory: `{exp.path}`. Trials: {len(exp.trials)} "
        f"({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}); {len(done)} complete, used below. "
        "Intervals are 95%: Student t for means, Welch for differences, log-scale Welch for speedups.\n",
        "## Conclusions\n",
        "\n".join(f"- {line}" for line in analysis.conclusions) or "- No comparison possible (see below).",
        "",
    ]
    if analysis.missing:
        parts += ["## What is missing\n", "\n".join(f"- {m}" for m in analysis.missing), ""]
    parts += ["## The original study's table, from this experiment\n",
              "Mean ± 95% CI half-width over seeds (accuracies in %; training accuracy's epoch in brackets).\n",
              _markdown(analysis.original, index=True),
              "## Per precision, across seeds\n", _markdown(analysis.aggregate),
              "## Against the fp32 baseline\n", _markdown(analysis.comparison),
              "## Inference speedup over eager fp32 (same trial), mean across trials\n",
              _markdown(analysis.inference)]
    parts += [f"## {title}\n\n![{title}]({name})\n" for title, name in plots]
    written["report.md"] = out / "report.md"
    written["report.md"].write_text("\n".join(parts))
    return written


def analyze_experiment(path: str | Path, out: str | Path | None = None,
                       wandb_mode: str | None = None) -> tuple[Analysis, dict[str, Path]]:
    """The Python API behind `cifar-tune analyze`: the local report, then (unless the mode is
    disabled) the W&B analysis run. `wandb_mode` None: the experiment config's wandb.mode."""
    from cifar_tune.analysis.wandb_report import publish
    from cifar_tune.orchestrator.config import load_config

    experiment = load_experiment(path)
    analysis = analyze(experiment)
    written = write_report(analysis, Path(out) if out else experiment.path / ANALYSIS_DIR)
    settings = load_config(experiment.path / "cifar_tune_config.yaml").wandb
    try:
        run_dir = publish(analysis, settings, wandb_mode or settings.mode, written)
    except Exception as exc:  # W&B down or misconfigured: the local report above is already written
        analysis.missing.append(f"W&B analysis run not published ({type(exc).__name__}: {exc})")
        print(f"W&B: could not publish the analysis run ({type(exc).__name__}: {exc}); the local report is complete")
        run_dir = None
    if run_dir is not None:
        written["wandb_run"] = run_dir
    return analysis, written
