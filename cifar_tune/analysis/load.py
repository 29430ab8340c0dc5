"""An experiment directory as tidy pandas tables, read from files alone (Ray need not run).

    exp = load_experiment("results/study")
    exp.trials    one row per trial: search values, final metrics, status (errored and
                  unfinished trials are kept and marked, never dropped)
    exp.history   one row per trial x epoch
    exp.bench     one row per trial x variant x batch size (bench.csv; empty without exports)

Statuses come from Tune's newest experiment_state-*.json; metrics from each trial's result.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cifar_tune.analysis.results import read_table, search_value

CONFIG_FILE = "cifar_tune_config.yaml"
FINAL_METRICS = ["best_val_acc", "best_epoch", "test_acc", "test_loss", "test_time_s", "training_time_s"]


class ExperimentNotFound(ValueError):
    exit_code = 2


@dataclass
class Experiment:
    path: Path
    search_columns: list[str]
    trials: pd.DataFrame
    history: pd.DataFrame
    bench: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def group_columns(self) -> list[str]:
        """What a result depends on besides the seed: the precision and any other searched key."""
        cols = [c for c in self.search_columns if c != "seed"]
        return cols if "precision" in cols else ["precision", *cols]


def _statuses(path: Path) -> dict[str, str]:
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return {}
    data = json.loads(states[-1].read_text())
    out = {}
    for entry in data.get("trial_data", []):
        state = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        out[state.get("relative_logdir", "")] = state.get("status", "")
    return out


def _read_history(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by an interrupted write: keep what came before
    return rows


def load_experiment(path: str | Path) -> Experiment:
    import yaml

    path = Path(path).expanduser().resolve()
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ExperimentNotFound(f"{path}: not a cifar-tune experiment directory (no {CONFIG_FILE})")
    from cifar_tune.orchestrator.search import resolve_key

    config = yaml.safe_load(config_path.read_text())
    search_columns = [resolve_key(k)[1] for k in (config.get("search") or {})]
    statuses = _statuses(path)

    trial_rows, history_rows = [], []
    for trial_dir in sorted(p for p in path.iterdir() if (p / "params.json").is_file()):
        params = json.loads((trial_dir / "params.json").read_text())
        keys = {c: search_value(params, c) for c in search_columns}
        keys.setdefault("precision", params.get("train", {}).get("precision"))
        keys.setdefault("seed", params.get("train", {}).get("seed"))
        history = _read_history(trial_dir)
        trial_id = history[-1]["trial_id"] if history else trial_dir.name
        for row in history:
            history_rows.append({"trial_id": trial_id, **keys, **row})
        last = history[-1] if history else {}
        status = statuses.get(trial_dir.name) or ("TERMINATED" if "test_acc" in last else "UNKNOWN")
        error = ""
        if status == "ERROR" and (trial_dir / "error.txt").is_file():
            lines = [l for l in (trial_dir / "error.txt").read_text().splitlines() if l.strip()]
            error = lines[-1][:300] if lines else ""
        best_train = max(history, key=lambda r: r.get("train_acc", -1)) if history else {}
        trial_rows.append({
            "trial_id": trial_id, **keys,
            **{m: last.get(m) for m in FINAL_METRICS},
            "train_images_per_s": pd.Series([r.get("train_images_per_s") for r in history], dtype=float).median(),
            "best_train_acc": best_train.get("train_acc"), "best_train_acc_epoch": best_train.get("epoch"),
            "best_train_loss": min((r["train_loss"] for r in history), default=None),
            "best_val_loss": min((r["val_loss"] for r in history), default=None),
            "epochs_done": last.get("epoch", 0), "epochs": params.get("train", {}).get("epochs"),
            "status": status, "complete": status == "TERMINATED" and "test_acc" in last,
            "error": error, "path": str(trial_dir),
        })
    bench_path = path / "bench.csv"
    bench = read_table(bench_path)
    return Experiment(path, search_columns, pd.DataFrame(trial_rows), pd.DataFrame(history_rows), bench)
