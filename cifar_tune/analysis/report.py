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
from cifar_tune.analysis.plots import (
    plot_latency,
    plot_metric_per_precision,
    plot_speedup_vs_accuracy,
    plot_val_curves,
)
from cifar_tune.analysis.stats import complete_trials
from cifar_tune.analysis.summary import Analysis, analyze
from cifar_tune.analysis.wandb_report import publish
from cifar_tune.names import ANALYSIS_DIR
from cifar_tune.storage import Location

COMPARISON_METHOD = """\
Seed k of every precision starts from the same initial weights and sees the same data order and
augmentation as seed k of fp32, so each precision is compared with fp32 seed by seed: the mean of
the per-seed differences in test accuracy (points) with a paired-t 95% interval (`ci_low_pp` to
`ci_high_pp`) and a bootstrap interval as a check that does not assume normality (in
comparison.csv). Verdicts, with margin {margin:g} pp (`analysis.margin_pp`): `equivalent` when the
interval lies within ±{margin:g} pp, `different` when it excludes 0, `inconclusive` otherwise.
`p_tost` tests equivalence (two one-sided tests), `p_holm` is the paired p-value adjusted (Holm)
across all comparisons here, `seeds_for_margin` is how many seeds would bring the interval within
the margin at the observed spread. Welch's unpaired test, which ignores the pairing, is in
comparison.csv as a check. `mcnemar_p`: McNemar's exact test on the test images one precision gets
right and the other wrong, pooled over the seed pairs (per pair in per_image.csv).

"""
COMPARISON_COLUMNS = ["precision", "n_pairs", "mean_diff_pp", "ci_low_pp", "ci_high_pp", "p_paired", "p_tost", "p_holm",
                      "verdict", "mcnemar_p", "seeds_for_margin", "train_speedup", "speedup_ci_low", "speedup_ci_high"]
TIMING_METHOD = """\
Each precision trained alone on one device (a whole GPU, or every CPU of a node) for a fixed number
of steps per round, rounds interleaved across precisions (`cifar-tune time`, section `timing`).
Median img/s over rounds with an order-statistics 95% interval (empty below 6 rounds); speedup over
fp32 as the geometric mean of the per-round ratios, log-scale t interval. Speed claims above use
these numbers where present.

"""
TIMING_SHOWN = ["precision", "rounds", "median_images_per_s", "ci_low", "ci_high", "speedup", "speedup_ci_low",
                "speedup_ci_high", "median_images_per_j", "device", "cpus", "gpus", "threads", "batch_size", "steps",
                "measured_at"]


def latency_method(bench: pd.DataFrame) -> str:
    """How the latencies in bench.csv were measured, in words: each timing's own `latency_method`."""
    if bench.empty:
        return "No export results."
    if "latency_method" not in bench or bench["latency_method"].isna().all():
        return ("Timed in each trial's export task, beside the trials still running: per trial, eager fp32's p50 "
                "over the variant's; geometric mean across trials, 95% CI (log scale); `n`: trials.")
    methods = "; ".join(f"`{m}`" for m in bench["latency_method"].dropna().unique())
    return ("Latency does not depend on the weights, so it was timed once, not per trial: " + methods + ". "
            "Speedup: eager fp32's p50 over the variant's in that session, with a bootstrap 95% interval; `n`: its "
            "timed runs. Accuracy change and parity are per trial (every trial's own test set pass), averaged here.")


def markdown_table(table: pd.DataFrame, index: bool = False, floats: str = "{:.4g}") -> str:
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
              "inference_speedups": analysis.inference, "per_image": analysis.per_image, "timing": analysis.timing}
    for name, table in tables.items():
        if not table.empty:
            written[f"{name}.csv"] = out / f"{name}.csv"
            table.to_csv(written[f"{name}.csv"], index=name == "original_study_table")

    plots = []
    if not done.empty:
        written["test_acc.png"] = plot_metric_per_precision(done, "test_acc", "test accuracy (%)",
                                                            out / "test_acc.png", 100, bounds=(0, 100))
        written["training_time.png"] = plot_metric_per_precision(done, "training_time_s", "training time (s)",
                                                                 out / "training_time.png", log=True)
        plots += [("Test accuracy per precision", "test_acc.png"),
                  (f"Training time per precision ({analysis.training_times})", "training_time.png")]
    if not exp.history.empty:
        written["val_acc.png"] = plot_val_curves(exp.history, out / "val_acc.png")
        plots.append(("Validation accuracy per epoch", "val_acc.png"))
    if not exp.bench.empty and "p50_ms" in exp.bench:
        written["latency.png"] = plot_latency(exp.bench, out / "latency.png")
        plots.append(("Inference latency per variant and batch size", "latency.png"))
        if not analysis.inference.empty and analysis.inference["accuracy_change_pp"].notna().any():
            written["speedup_vs_accuracy.png"] = plot_speedup_vs_accuracy(analysis.inference,
                                                                          out / "speedup_vs_accuracy.png")
            plots.append(("What each deployment form costs: speedup against accuracy change", "speedup_vs_accuracy.png"))

    counts = exp.trials["status"].value_counts().to_dict() if not exp.trials.empty else {}
    parts = [
        f"# Analysis of `{exp.path.name}`\n",
        f"Experiment directory: `{exp.path}`. Trials: {len(exp.trials)} "
        f"({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}); {len(done)} complete, used below. "
        "Intervals are 95%: Student t for means, paired t (and a bootstrap check) for accuracy differences, "
        "log-scale Welch for speedups.\n",
        "## Conclusions\n",
        "\n".join(f"- {line}" for line in analysis.conclusions) or "- No comparison possible (see below).",
        "",
    ]
    if analysis.missing:
        parts += ["## What is missing\n", "\n".join(f"- {m}" for m in analysis.missing), ""]
    parts += ["## The original study's table, from this experiment\n",
              "Mean ± 95% CI half-width over seeds (accuracies in %; training accuracy's epoch in brackets).\n",
              markdown_table(analysis.original, index=True),
              "## Per precision, across seeds\n",
              f"training_time_s and train_images_per_s: {analysis.training_times}.\n",
              markdown_table(analysis.aggregate),
              "## Against the fp32 baseline\n", COMPARISON_METHOD.format(margin=analysis.margin_pp),
              markdown_table(analysis.comparison[[c for c in COMPARISON_COLUMNS if c in analysis.comparison]]
                        if not analysis.comparison.empty else analysis.comparison),
              "## Training speed, each precision with the device to itself\n",
              TIMING_METHOD + markdown_table(analysis.timing[[c for c in TIMING_SHOWN if c in analysis.timing]])
              if not analysis.timing.empty else
              f"Not measured: {analysis.training_times}. `cifar-tune time {exp.path}` measures it.\n",
              "## Image by image: test images only one of the pair gets right\n",
              markdown_table(analysis.per_image),
              "## Inference speedup over eager fp32\n",
              latency_method(exp.bench) + "\n", markdown_table(analysis.inference)]
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


def analyze_experiment(path: str | Path, out: str | Path | None = None, wandb_mode: str | None = None,
                       margin_pp: float | None = None) -> tuple[Analysis, dict[str, str]]:
    """The Python API behind `cifar-tune analyze`: the report (into `out`, default the experiment's
    analysis/ folder, also in cloud storage), then (unless the mode is disabled) the W&B analysis
    run. `wandb_mode` None: the experiment config's wandb.mode; `margin_pp` None: its
    analysis.margin_pp. Returns {file name: where it is}."""
    experiment = load_experiment(path)
    analysis = analyze(experiment, margin_pp=margin_pp)
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
