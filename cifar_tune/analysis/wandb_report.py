"""The analysis run on Weights & Biases: one run per analysis (`job_type` "analysis", in the
experiment's group) holding the tables, charts and headline numbers of the local report.

Tables: per-trial results, the per-precision aggregate, the comparison with fp32, the per-image
(McNemar) comparison, isolated training speed (timing.csv), the original study's table, inference
speedups. Charts: test accuracy and training time per precision (one
point per seed), val_acc per epoch per precision (mean), inference latency per variant and batch
size; the report's PNGs (with their error bars and bands) as images. Summary: headline numbers.

Saved W&B workspaces or reports (the `wandb-workspaces` package) are not made: that needs the
network, which this project's machines do not have, so it is left out rather than shipped untested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cifar_tune.analysis.stats import complete_trials
from cifar_tune.analysis.summary import Analysis
from cifar_tune.config import WandbConfig
from cifar_tune.wandb_setup import offline_note, resolve_mode, wandb_dir


def _table(frame: pd.DataFrame) -> Any:
    import wandb

    frame = frame.drop(columns=[c for c in ("path",) if c in frame]).reset_index(drop=False)
    frame = frame.drop(columns=["index"]) if "index" in frame and frame["index"].dtype != object else frame
    return wandb.Table(dataframe=frame.astype({c: str for c in frame.columns if frame[c].dtype == object}))


def headline(analysis: Analysis) -> dict[str, float]:
    """The numbers a reader wants first, flat, for the run summary."""
    out: dict[str, float] = {}
    trials = analysis.experiment.trials
    done = complete_trials(trials)
    for precision, part in done.groupby("precision"):
        out[f"{precision}/test_acc_mean"] = float(part["test_acc"].mean())
        out[f"{precision}/training_time_s_mean"] = float(part["training_time_s"].mean())
        out[f"{precision}/n"] = int(len(part))
    for _, row in analysis.comparison.iterrows():
        key = row["precision"]
        out[f"{key}/test_acc_diff_pp"] = float(row["mean_diff_pp"])
        out[f"{key}/test_acc_diff_p_paired"] = float(row["p_paired"])
        out[f"{key}/test_acc_diff_p_tost"] = float(row["p_tost"])
        out[f"{key}/train_speedup"] = float(row["train_speedup"])
    for _, row in analysis.timing.iterrows():  # isolated timing: each precision with the device to itself
        out[f"{row['precision']}/isolated_images_per_s"] = float(row["median_images_per_s"])
    return out


def publish(analysis: Analysis, settings: WandbConfig, mode: str, images: dict[str, Path]) -> Path | None:
    """Log the analysis run; returns its local run directory (None when disabled)."""
    mode = resolve_mode(mode)
    if mode == "disabled":
        return None
    import wandb

    exp = analysis.experiment
    folder = wandb_dir(exp.path)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "offline" and settings.mode == "auto":
        print(offline_note(folder))
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group_for(exp.path.name),
                     job_type="analysis",
                     name=f"{exp.path.name}-analysis", tags=["analysis", *settings.tags], mode=mode, dir=str(folder),
                     config={"experiment": exp.path.name, "search_columns": exp.search_columns,
                             "trials": len(exp.trials)}, reinit="finish_previous")
    try:
        logged: dict[str, Any] = {}
        tables = {"trials": exp.trials, "aggregate": analysis.aggregate, "comparison": analysis.comparison,
                  "per_image": analysis.per_image, "training_speed": analysis.timing,
                  "original_study_table": analysis.original.rename_axis("row"), "inference_speedups": analysis.inference}
        for name, frame in tables.items():
            if not frame.empty:
                logged[f"tables/{name}"] = _table(frame)

        done = complete_trials(exp.trials)
        if not done.empty:
            points = wandb.Table(dataframe=done[["precision", "seed", "test_acc", "training_time_s"]].astype(
                {"precision": str}))
            logged["charts/test_acc_per_seed"] = wandb.plot.scatter(points, "precision", "test_acc",
                                                                    title="Test accuracy, one point per seed")
            logged["charts/training_time_per_seed"] = wandb.plot.scatter(points, "precision", "training_time_s",
                                                                         title="Training time (s), one point per seed")
        if not exp.history.empty:
            curves = exp.history.groupby(["precision", "epoch"])["val_acc"].mean().unstack("precision")
            logged["charts/val_acc"] = wandb.plot.line_series(
                xs=list(curves.index), ys=[list(curves[c]) for c in curves.columns], keys=list(curves.columns),
                title="Validation accuracy per epoch (mean over seeds)", xname="epoch")
        if not exp.bench.empty and "p50_ms" in exp.bench:
            latency = exp.bench.dropna(subset=["p50_ms"]).groupby(["variant", "batch_size"])["p50_ms"].mean()
            bars = wandb.Table(dataframe=latency.reset_index().assign(
                label=lambda f: f["variant"] + " @ " + f["batch_size"].astype(str))[["label", "p50_ms"]])
            logged["charts/latency"] = wandb.plot.bar(bars, "label", "p50_ms", title="p50 latency (ms)")
        for name, path in images.items():
            if name.endswith(".png"):
                logged[f"plots/{name.removesuffix('.png')}"] = wandb.Image(str(path))
        run.log(logged)
        run.summary.update(headline(analysis))
        run.summary["conclusions"] = "\n".join(analysis.conclusions)
        run.summary["training_times"] = analysis.training_times  # how per-trial times were measured
        return Path(run.dir).parent
    finally:
        run.finish()
