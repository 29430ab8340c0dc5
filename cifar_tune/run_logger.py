"""The W&B logging actor of a run: every trial's W&B run, in one process (tracking.py starts it).

A module of its own so the actor's process imports wandb and a little of Ray, not torch: a Ray
worker imports the module that defines the class it runs, and tracking.py's imports reach torch
(importing it: 1.2 CPU-s, and a peak RSS of 806 MB instead of 198 MB, in the one logging process
of every run).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.air.integrations.wandb import _is_allowed_type
from ray.tune.result import TRAINING_ITERATION
from ray.tune.utils import flatten_dict

_log = logging.getLogger(__name__)


class RunLogger:
    """Every trial's W&B run, in one process (one wandb-core service for them all). Calls arrive in
    the order the driver sent them (one caller, one thread): start, results, end, per trial."""

    def __init__(self) -> None:
        import wandb

        self._wandb = wandb
        self._runs: dict[str, tuple[Any, set[str], set[str]]] = {}  # trial id -> (run, excluded, to config)
        self._listed_packages = False

    def start(self, trial_id: str, exclude: list[str], to_config: list[str], init_kwargs: dict[str, Any]) -> None:
        if trial_id in self._runs:  # a trial restarted within the run keeps its W&B run
            return
        # wandb lists the installed packages for every run it starts (files/requirements.txt), reading
        # each one's metadata: 0.2 CPU-s a trial, most of this actor's work. The list is this
        # process's, the same for every trial, so only the first run of the logger saves it.
        settings = self._wandb.Settings(x_save_requirements=not self._listed_packages)
        self._listed_packages = True
        run = self._wandb.init(**{**init_kwargs, "reinit": "create_new", "settings": settings})  # beside the others
        self._runs[trial_id] = (run, set(exclude), set(to_config))

    def log(self, trial_id: str, result: dict[str, Any]) -> None:
        run, exclude, to_config = self._runs[trial_id]
        metrics, config = {}, dict(result.get("config", {}))
        for key, value in flatten_dict(result, delimiter="/").items():
            if any(key == item or key.startswith(item + "/") for item in exclude):
                continue
            if any(key == item or key.startswith(item + "/") for item in to_config):
                config[key] = value
            elif _is_allowed_type(value):
                metrics[key] = value
        config.pop("callbacks", None)
        try:
            run.config.update(config, allow_val_change=True)
            run.log(metrics, step=metrics.get(TRAINING_ITERATION))
        except Exception as exc:  # a lost data point must not end the logging of every trial
            _log.warning("W&B: result of trial %s not logged: %s", trial_id, exc)

    def end(self, trial_id: str) -> None:
        if trial_id in self._runs:
            self._runs.pop(trial_id)[0].finish()

    def close(self) -> None:
        """End every run still open (trials stopped by Ctrl-C), then wait for wandb-core to write
        the last bytes of each run file: once the actor is killed, nothing more is written."""
        for trial_id in list(self._runs):
            self.end(trial_id)
        self._wandb.teardown()
