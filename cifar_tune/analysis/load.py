"""An experiment directory as tidy pandas tables, read from files alone (Ray need not run, the
data need not be where it was).

    exp = load_experiment("results/study")
    exp.trials    one row per trial (cifar_tune.analysis.trials): search values, final metrics,
                  status; errored and unfinished trials are kept and marked, never dropped
    exp.history   one row per trial x epoch
    exp.bench     one row per trial x variant x batch size (bench.csv; empty without exports)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cifar_tune import names
from cifar_tune.analysis.trials import read_table, read_trial_records, trial_table
from cifar_tune.config import ExperimentConfig, load_saved_config
from cifar_tune.errors import CifarTuneError
from cifar_tune.plan import SearchPlan, search_value


class ExperimentNotFound(CifarTuneError):
    """The path is not an experiment folder written by `cifar-tune run`."""


@dataclass
class Experiment:
    path: Path
    config: ExperimentConfig
    search_columns: list[str]
    trials: pd.DataFrame
    history: pd.DataFrame
    bench: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def group_columns(self) -> list[str]:
        """What a result depends on besides the seed: the precision and any other searched key."""
        cols = [c for c in self.search_columns if c != "seed"]
        return cols if "precision" in cols else ["precision", *cols]


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path).expanduser().resolve()
    if not (path / names.CONFIG_FILE).is_file():
        raise ExperimentNotFound(f"{path}: not a cifar-tune experiment directory (no {names.CONFIG_FILE})")
    config = load_saved_config(path / names.CONFIG_FILE)
    columns = SearchPlan.of(config).columns
    records = read_trial_records(path)
    history_rows = []
    for record in records:
        keys = {c: search_value(record.params, c) for c in columns}
        keys.setdefault("precision", record.params.get("train", {}).get("precision"))
        keys.setdefault("seed", record.params.get("train", {}).get("seed"))
        trial_id = record.history[-1]["trial_id"] if record.history else Path(record.path).name
        history_rows += [{"trial_id": trial_id, **keys, **row} for row in record.history]
    return Experiment(path, config, columns, trial_table(records, columns), pd.DataFrame(history_rows),
                      read_table(path / names.BENCH_CSV))
