"""The per-trial table: one row per trial, built in one place from what a trial left behind.

`results.csv` at the end of a run and `load_experiment` in the analysis both come from
`trial_table`, so they agree on every value and on the status words (cifar_tune.names):

    TERMINATED  ran every epoch and was tested
    STOPPED     ended early by the scheduler (ASHA), before the test pass
    ERROR       raised; `error` holds the last line of its traceback
    UNFINISHED  pending, running or paused when the experiment stopped; `cifar-tune resume` it

A trial is given as a `TrialRecord`: its config, its per-epoch metrics, the status Tune recorded
(when known) and its error text. `read_trial_records` reads them from an experiment folder alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cifar_tune import names
from cifar_tune.errors import short_error
from cifar_tune.search import search_value


@dataclass
class TrialRecord:
    path: str
    params: dict[str, Any]  # the trial's config
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per reported epoch
    tune_status: str | None = None  # what Tune recorded: TERMINATED, ERROR, RUNNING, ... (None: unknown)
    error: str = ""  # the traceback, or its last line
    predictions: np.ndarray | None = None  # rows: predicted and true class of each test image (finished trials)


def trial_status(tune_status: str | None, last: dict[str, Any]) -> str:
    """Tune's status and the last reported metrics -> one of names.TRIAL_STATUSES."""
    if tune_status == "ERROR":
        return names.ERROR
    if "test_acc" in last:
        return names.TERMINATED
    if tune_status == "TERMINATED":  # Tune ended it without the last epoch: the scheduler did
        return names.STOPPED
    return names.UNFINISHED


# The trial table's columns after the searched keys, precision and seed.
TRIAL_COLUMNS = [*names.FINAL_METRICS, names.SHARING_METRIC, "epochs_done", "epochs", "status", "complete", "error", "device",
                 "trial_id", "path", "node_ip", "node_id", "hostname", "train_images_per_s", "best_train_acc",
                 "best_train_acc_epoch", "best_train_loss", "best_val_loss", "energy_j", "images_per_j", "energy_source",
                 "compile_time_s", "cuda_graph"]


def trial_row(record: TrialRecord, columns: list[str]) -> dict[str, Any]:
    history, params = record.history, record.params
    last = history[-1] if history else {}
    train = params.get("train", {})
    keys = {c: search_value(params, c) for c in columns}
    keys.setdefault("precision", train.get("precision"))
    keys.setdefault("seed", train.get("seed"))
    status = trial_status(record.tune_status, last)
    best_train = max(history, key=lambda r: r.get("train_acc", -1)) if history else {}
    return {
        **keys,
        **{m: last.get(m) for m in names.FINAL_METRICS},
        # The most trials that shared its device during any epoch: how packed its training_time_s was.
        names.SHARING_METRIC: pd.Series([r.get(names.SHARING_METRIC) for r in history], dtype=float).max(),
        "epochs_done": last.get("epoch", 0),
        "epochs": train.get("epochs"),
        "status": status,
        "complete": status == names.TERMINATED,
        "error": short_error(record.error) if status == names.ERROR else "",
        "device": last.get("device", ""),
        "trial_id": last.get("trial_id", Path(record.path).name),
        "path": record.path,
        # Where the last epoch ran (Tune adds node_ip and hostname to every result; the trainable adds node_id).
        "node_ip": last.get("node_ip", ""),
        "node_id": last.get("node_id", ""),
        "hostname": last.get("hostname", ""),
        "train_images_per_s": pd.Series([r.get("train_images_per_s") for r in history], dtype=float).median(),
        "best_train_acc": best_train.get("train_acc"),
        "best_train_acc_epoch": best_train.get("epoch"),
        "best_train_loss": min((r["train_loss"] for r in history if "train_loss" in r), default=None),
        "best_val_loss": min((r["val_loss"] for r in history if "val_loss" in r), default=None),
        # Device energy over its epochs, where the hardware tells it (cifar_tune.energy); else why not.
        "energy_j": pd.Series([r.get("energy_j") for r in history], dtype=float).sum(min_count=1),
        "images_per_j": pd.Series([r.get("images_per_j") for r in history], dtype=float).median(),
        "energy_source": last.get("energy_source", ""),
        "compile_time_s": last.get("compile_time_s"),  # train.compile: the last process's compile, apart from epochs
        "cuda_graph": bool(last.get("cuda_graph", False)),  # the step captured and replayed (train.cuda_graph)
    }


def trial_table(records: list[TrialRecord], columns: list[str]) -> pd.DataFrame:
    """One row per trial, sorted by the searched columns. `columns`: the searched keys."""
    rows = [trial_row(r, columns) for r in records]
    leading = list(dict.fromkeys([*columns, "precision", "seed"]))
    table = pd.DataFrame(rows, columns=leading + [c for c in TRIAL_COLUMNS if c not in leading])
    return table.sort_values(columns, kind="stable").reset_index(drop=True) if columns and rows else table


def results_view(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The documented results.csv columns: the searched keys, then names.RESULTS_COLUMNS."""
    return table[[*columns, *names.RESULTS_COLUMNS]]


def format_table(table: pd.DataFrame, columns: list[str]) -> str:
    """The printed form of results.csv: accuracies in %, times in s, no paths."""
    shown = results_view(table, columns).drop(columns=["path", "trial_id"])
    for col in ("best_val_acc", "test_acc"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    shown["training_time_s"] = shown["training_time_s"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    shown["test_loss"] = shown["test_loss"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    if not shown["error"].astype(bool).any():
        shown = shown.drop(columns=["error"])
    return shown.to_string(index=False)


# --------------------------------------------------------------------------- from files


def _tune_statuses(experiment_dir: Path) -> dict[str, str]:
    """{trial folder name: status} from Tune's newest experiment_state file."""
    states = sorted(experiment_dir.glob(names.EXPERIMENT_STATE_GLOB))
    if not states:
        return {}
    out = {}
    for entry in json.loads(states[-1].read_text()).get("trial_data", []):
        state = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        out[state.get("relative_logdir", "")] = state.get("status", "")
    return out


def _read_history(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / names.TRIAL_RESULT_FILE
    rows = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by an interrupted write: keep what came before
    if rows and all("epoch" in row for row in rows):
        # A trial restarted from a checkpoint older than its last report (train.checkpoint_every > 1)
        # reports those epochs again: keep each epoch's latest report.
        rows = sorted({row["epoch"]: row for row in rows}.values(), key=lambda row: row["epoch"])
    return rows


def read_trial_records(experiment_dir: str | Path, shown_at: str | None = None) -> list[TrialRecord]:
    """Every trial folder of an experiment (those holding Tune's params.json). `shown_at`: the
    experiment's own location when `experiment_dir` is a local copy of it (trial paths then name it)."""
    experiment_dir = Path(experiment_dir)
    statuses = _tune_statuses(experiment_dir)
    records = []
    for trial_dir in sorted(p for p in experiment_dir.iterdir() if (p / names.TRIAL_PARAMS_FILE).is_file()):
        error_file = trial_dir / names.TRIAL_ERROR_FILE
        records.append(TrialRecord(
            path=f"{shown_at.rstrip('/')}/{trial_dir.name}" if shown_at else str(trial_dir),
            params=json.loads((trial_dir / names.TRIAL_PARAMS_FILE).read_text()),
            history=_read_history(trial_dir), tune_status=statuses.get(trial_dir.name),
            error=error_file.read_text() if error_file.is_file() else "", predictions=_read_predictions(trial_dir)))
    return records


def read_all_trial_records(experiment_dir: str | Path, shown_at: str | None = None) -> list[TrialRecord]:
    """The experiment's trials and those of its extensions (<experiment>/extend-<k>/, more seeds
    added later by `cifar-tune extend`), in that order."""
    experiment_dir = Path(experiment_dir)
    records = read_trial_records(experiment_dir, shown_at)
    for extension in extension_dirs(experiment_dir):
        where = f"{shown_at.rstrip('/')}/{extension.name}" if shown_at else None
        records += read_trial_records(extension, where)
    return records


def extension_dirs(experiment_dir: Path) -> list[Path]:
    """<experiment>/extend-1, extend-2, ... that hold a saved config, in order."""
    found = [p for p in experiment_dir.glob(names.EXTENSION_PREFIX + "*") if (p / names.CONFIG_FILE).is_file()]
    return sorted(found, key=extension_number)


def extension_number(path: Path | str) -> int:
    """k of an extend-<k> folder (0 for a name that is not one)."""
    suffix = Path(path).name.removeprefix(names.EXTENSION_PREFIX)
    return int(suffix) if suffix.isdigit() else 0


def _read_predictions(trial_dir: Path) -> np.ndarray | None:
    """The test predictions saved with the trial's last checkpoint, if it finished (and was run by
    a version that saves them)."""
    saved = sorted(trial_dir.glob(f"{names.CHECKPOINT_GLOB}/{names.PREDICTIONS_FILE}"))
    return np.load(saved[-1], allow_pickle=False) if saved else None
