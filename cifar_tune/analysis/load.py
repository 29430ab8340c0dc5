"""An experiment directory as tidy pandas tables, read from files alone (Ray need not run, the
data need not be where it was), on local disk or in cloud storage.

    exp = load_experiment("results/study")      # or "s3://bucket/studies/study"
    exp.trials    one row per trial (cifar_tune.analysis.trials): search values, final metrics,
                  status; errored and unfinished trials are kept and marked, never dropped;
                  the trials of extensions (extend-<k>/, `cifar-tune extend`) too
    exp.history   one row per trial x epoch
    exp.bench     one row per trial x variant x batch size (bench.csv; empty without exports),
                  extensions' rows too
    exp.predictions  per finished trial: predicted and true class of every test image
    exp.timing    per precision: isolated training speed (timing.csv; empty until `cifar-tune time`)
    exp.exports   per trial: whether its export finished (exports.json: ok / failed / timeout, the
                  reason), extensions' trials too
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cifar_tune import names
from cifar_tune.analysis.trials import TrialRecord, extension_dirs, read_all_trial_records, trial_table
from cifar_tune.config import ExperimentConfig, load_saved_config
from cifar_tune.errors import CifarTuneError
from cifar_tune.search import SearchPlan, search_value
from cifar_tune.storage import Location


class ExperimentNotFound(CifarTuneError):
    """The path is not an experiment folder written by `cifar-tune run`."""


def _is_record(rel: str) -> bool:
    """The small files the tables are made of: not checkpoints (but their test predictions),
    exported models, W&B files or an earlier analysis (also inside extend-<k>/ folders)."""
    *folders, name = rel.split("/")
    if any(folder.startswith("checkpoint_") for folder in folders):
        return name == names.PREDICTIONS_FILE  # of a checkpoint, only the test predictions
    return not any(folder in (names.EXPORT_DIR, names.EXPORT_CACHE_DIR, "wandb", names.ANALYSIS_DIR) for folder in folders)


@contextlib.contextmanager
def local_records(experiment: Location) -> Iterator[Path]:
    """The experiment folder as a local path to read: itself on local disk; from cloud storage, a
    temporary copy of its records (trial params, results, Tune's state, bench.csv; no checkpoints)."""
    if experiment.is_local:
        yield experiment.local_path
        return
    with tempfile.TemporaryDirectory(prefix="cifar-tune-records-") as folder:
        yield experiment.download(Path(folder), keep=_is_record)


def read_records(experiment: Location) -> list[TrialRecord]:
    """Every trial record of the experiment and its extensions, wherever it lives; trial paths
    name the experiment's own location (not the temporary copy a bucket is read through)."""
    with local_records(experiment) as folder:
        return read_all_trial_records(folder, _shown_at(experiment))


def _shown_at(experiment: Location) -> str | None:
    """How trial paths name a bucket's experiment (None: its local path is its name)."""
    return None if experiment.is_local else f"{experiment.scheme}://{experiment.path}"


def _read_exports(folder: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    """bench.csv rows and exports.json entries of the experiment and of each extension (each writes
    its own), from the folder `local_records` gives."""
    tables, exports = [], {}
    for where in map(Location.of, [folder, *extension_dirs(folder)]):
        if not (table := where.read_csv(names.BENCH_CSV)).empty:
            tables.append(table)
        if where.is_file(names.EXPORTS_JSON):
            exports.update(json.loads(where.read_text(names.EXPORTS_JSON)))
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), exports


@dataclass
class Experiment:
    path: Location  # where the experiment lives (local folder or cloud URI)
    config: ExperimentConfig
    search_columns: list[str]
    trials: pd.DataFrame
    history: pd.DataFrame
    bench: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # trial id -> (predicted, true) per test image
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)  # timing.csv
    exports: dict[str, dict] = field(default_factory=dict)  # exports.json: trial id -> status, reason

    @property
    def group_columns(self) -> list[str]:
        """What a result depends on besides the seed: the precision and any other searched key."""
        cols = [c for c in self.search_columns if c != "seed"]
        return cols if "precision" in cols else ["precision", *cols]


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment folder: a local path or a cloud URI (s3://bucket/prefix/name)."""
    location = Location.of(path)
    if not location.is_file(names.CONFIG_FILE):
        raise ExperimentNotFound(f"{location}: not a cifar-tune experiment directory (no {names.CONFIG_FILE})")
    config = load_saved_config(location / names.CONFIG_FILE)
    columns = SearchPlan.of(config).columns
    with local_records(location) as folder:  # one download of a bucket's records serves both
        records = read_all_trial_records(folder, _shown_at(location))
        bench, exports = _read_exports(folder)
    history_rows, predictions = [], {}
    for record in records:
        keys = {c: search_value(record.params, c) for c in columns}
        keys.setdefault("precision", record.params.get("train", {}).get("precision"))
        keys.setdefault("seed", record.params.get("train", {}).get("seed"))
        trial_id = record.history[-1]["trial_id"] if record.history else Path(record.path).name
        history_rows += [{"trial_id": trial_id, **keys, **row} for row in record.history]
        if record.predictions is not None:
            predictions[trial_id] = record.predictions
    return Experiment(location, config, columns, trial_table(records, columns), pd.DataFrame(history_rows), bench,
                      predictions, location.read_csv(names.TIMING_CSV), exports)
