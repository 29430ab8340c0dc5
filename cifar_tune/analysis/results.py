"""The experiment's results table: one row per trial, from Tune's ResultGrid.

Written as `results.csv` in the experiment directory and printed at the end
of a run. The analysis layer builds its statistics on top of this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_FILE = "results.csv"
TABLE_COLUMNS = ["best_val_acc", "best_epoch", "test_acc", "test_loss", "training_time_s",
                 "epochs_done", "status", "error", "device", "trial_id", "path"]


def search_value(config: dict[str, Any], column: str) -> Any:
    """A searched key's value in a trial config (it sits in the train or the model section)."""
    for section in ("train", "model"):
        if column in config.get(section, {}):
            return config[section][column]
    return None


def trial_row(result: Any, search_columns: list[str]) -> dict[str, Any]:
    """One ray.tune.Result -> one table row."""
    metrics = result.metrics or {}
    if result.error is not None:
        status = "ERROR"
    elif "test_acc" in metrics:
        status = "TERMINATED"
    else:
        status = "STOPPED"  # ended early by the scheduler, before the test pass
    row = {col: search_value(result.config or {}, col) for col in search_columns}
    row.update({
        "best_val_acc": metrics.get("best_val_acc"),
        "best_epoch": metrics.get("best_epoch"),
        "test_acc": metrics.get("test_acc"),
        "test_loss": metrics.get("test_loss"),
        "training_time_s": metrics.get("training_time_s"),
        "epochs_done": metrics.get("epoch", 0),
        "status": status,
        "error": str(result.error).strip().splitlines()[-1][:200] if result.error is not None else "",
        "device": metrics.get("device", ""),
        "trial_id": metrics.get("trial_id", Path(result.path).name),
        "path": result.path,
    })
    return row


def results_table(result_grid: Any, search_columns: list[str]) -> pd.DataFrame:
    rows = [trial_row(result, search_columns) for result in result_grid]
    table = pd.DataFrame(rows, columns=search_columns + TABLE_COLUMNS)
    return table.sort_values(search_columns, kind="stable").reset_index(drop=True) if search_columns else table


def format_table(table: pd.DataFrame) -> str:
    """The printed form: accuracies in %, times in s, no paths."""
    shown = table.drop(columns=["path", "trial_id"])
    for col in ("best_val_acc", "test_acc"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    shown["training_time_s"] = shown["training_time_s"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    shown["test_loss"] = shown["test_loss"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    if not shown["error"].astype(bool).any():
        shown = shown.drop(columns=["error"])
    return shown.to_string(index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV table that may not exist yet (or holds only an empty header): empty DataFrame then."""
    path = Path(path)
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 1 else pd.DataFrame()


def write_results(table: pd.DataFrame, experiment_dir: str | Path) -> Path:
    path = Path(experiment_dir) / RESULTS_FILE
    table.to_csv(path, index=False)
    return path
