"""The local report: `cifar-tune analyze EXPERIMENT_DIR` writes report.md, PNG plots and a CSV of
every table into `<experiment dir>/analysis/` (or --out; in cloud storage too), then the W&B analysis run. Needs no
account and no network.

It works on whatever the experiment has: one trial, errored or unfinished trials, no export
results; and it says what is missing rather than leaving a blank.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from cifar_tune.analysis.load import load_experiment
from cifar_tune.analysis.plots import plot_latency, plot_metric_per_precision, plot_val_curves
from cifar_tune.analysis.stats import complete_trials
from cifar_tune.analysis.summary import Analysis, analyze
from cifar_tune.analysis.wandb_report import publish
from cifar_tune.names import ANALYSIS_DIR
from cifar_tune.storage import Location


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


@contextlib.contextmanager
def _report_folder(target: Location) -> Iterator[Path]:
    """A local folder to write the report into; for cloud storage a temporary one, uploaded to
    `target` at the end."""
    if target.is_local:
        yield target.local_path
        return
    with tempfile.TemporaryDirectory(prefix="cifar-tune-report-") as folder:
        yield Path(folder)
        target.upload(Path(folder))


def analyze_experiment(path: str | Path, out: str | Path | None = None,
                       wandb_mode: str | None = None) -> tuple[Analysis, dict[str, str]]:
    """The Python API behind `cifar-tune analyze`: the report (into `out`, default the experiment's
    analysis/ folder, also in cloud storage), then (unless the mode is disabled) the W&B analysis
    run. `wandb_mode` None: the experiment config's wandb.mode. Returns {file name: where it is}."""
    experiment = load_experiment(path)
    analysis = analyze(experiment)
    target = Location.of(out) if out else experiment.path / ANALYSIS_DIR
    with _report_folder(target) as folder:
        files = write_report(analysis, folder)
        run_dir = _publish(analysis, files, wandb_mode)
    written = {name: (target / name).uri for name in files}
    if run_dir is not None:
        written["wandb_run"] = str(run_dir)
    return analysis, written


def _publish(analysis: Analysis, files: dict[str, Path], wandb_mode: str | None) -> Path | None:
    settings = analysis.experiment.config.wandb
    try:
        return publish(analysis, settings, wandb_mode or settings.mode, files)
    except Exception as exc:  # W&B down or misconfigured: the local report above is already written
        analysis.missing.append(f"W&B analysis run not published ({type(exc).__name__}: {exc})")
        print(f"W&B: could not publish the analysis run ({type(exc).__name__}: {exc}); the local report is complete")
        return None
