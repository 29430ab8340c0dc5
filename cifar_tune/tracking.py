"""Weights & Biases during a run: the per-trial logging callback (mode and folders: wandb_setup.py).

Each trial is a W&B run, logged through one Ray actor for the whole experiment run (`RunLogger`
in run_logger.py: no CPU of its own, on the driver's node): a slow or unreachable W&B server
delays that actor, never the training, and a study of a thousand trials starts one logging
process, not two per trial as Ray Tune's own `WandbLoggerCallback` does (whose config handling
this callback keeps).
Runs are grouped by experiment name (job_type `train`), named `<precision>-s<seed>` (plus the other
searched values), tagged `precision:<p>` and `seed:<s>`, carry the trial config with `precision`,
`seed` and every searched key also at its top level (what a W&B filter or grouping reads), and their
summary holds the last (final) metrics. The run id is the trial id, so a resumed trial continues its
run. Files go to `<experiment dir>/wandb` unless WANDB_DIR is set (wandb_setup.wandb_dir).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray.air.integrations.wandb import WANDB_ENV_VAR, WandbLoggerCallback, _clean_log
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cifar_tune.run_logger import RunLogger
from cifar_tune.search import search_value
from cifar_tune.storage import Location
from cifar_tune.wandb_setup import apply_wandb_mode, offline_note, wandb_dir

_log = logging.getLogger(__name__)


class TaggedWandbLoggerCallback(WandbLoggerCallback):
    """Ray's W&B callback (API key, project, each run's config and init arguments), plus tags from
    each trial's precision and seed, logging every trial through the run's one `RunLogger`."""

    def __init__(self, *args: Any, extra_tags: list[str] | None = None, search_keys: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_tags = list(extra_tags or [])
        self.search_keys = list(search_keys or [])
        self._logger: Any = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks: not the live actor
        return {**self.__dict__, "_logger": None}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self._logger = None  # also for a callback restored from an experiment written before it had one
        self._started: set[str] = set()

    def _run_logger(self) -> Any:
        if self._logger is None:
            env = {WANDB_ENV_VAR: os.environ[WANDB_ENV_VAR]} if WANDB_ENV_VAR in os.environ else {}
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self._logger = ray.remote(RunLogger).options(
                num_cpus=0, scheduling_strategy=here, runtime_env={"env_vars": {**env, "WANDB_START_METHOD": "thread"}},
            ).remote()
        return self._logger

    def _start_logging_actor(self, trial: Any, exclude_results: list[str], **init_kwargs: Any) -> None:
        train = trial.config.get("train", {})
        tags = [f"precision:{train.get('precision')}", f"seed:{train.get('seed')}", *self.extra_tags]
        top = run_keys(trial.config, self.search_keys)
        init_kwargs = {**init_kwargs, "tags": tags, "config": {**top, **init_kwargs.get("config", {})},
                       "name": run_name(top)}
        self._run_logger().start.remote(trial.trial_id, exclude_results, self.AUTO_CONFIG_KEYS, init_kwargs)
        self._started.add(trial.trial_id)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial.trial_id not in self._started:
            self.log_trial_start(trial)
        result = _clean_log(result, video_kwargs=self.video_kwargs, image_kwargs=self.image_kwargs)
        self._run_logger().log.remote(trial.trial_id, result)

    def log_trial_save(self, trial: Any) -> None:
        pass  # checkpoints are not uploaded to W&B (upload_checkpoints stays off)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial.trial_id in self._started:
            self._started.discard(trial.trial_id)
            self._run_logger().end.remote(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Every run ended and written (after Ctrl-C too: the trials still running never got their
        end), within upload_timeout; then the logger goes, and nothing of the run's W&B is left."""
        if self._logger is None:
            return
        logger, self._logger = self._logger, None
        try:
            ray.get(logger.close.remote(), timeout=self._upload_timeout)
        except Exception as exc:
            _log.warning("W&B: the runs did not all close within %s s: %s", self._upload_timeout, exc)
        ray.kill(logger)

    def __del__(self) -> None:
        pass  # Ray's version stops per-trial actors; the one logger ends with on_experiment_end or the job


def run_keys(trial_config: dict[str, Any], search_keys: list[str]) -> dict[str, Any]:
    """precision, seed and every searched key of a trial, flat: a W&B run's top-level config."""
    keys = dict.fromkeys(["precision", "seed", *search_keys])
    return {k: search_value(trial_config, k) for k in keys}


def run_name(keys: dict[str, Any]) -> str:
    """`<precision>-s<seed>`, then the other searched values (`lr0.1`): short, and unique per trial."""
    rest = "-".join(f"{k}{v}" for k, v in keys.items() if k not in ("precision", "seed"))
    return f"{keys.get('precision')}-s{keys.get('seed')}" + (f"-{rest}" if rest else "")


def trial_callback(config: Any, experiment: Location, search_keys: list[str] | None = None
                   ) -> TaggedWandbLoggerCallback | None:
    """The per-trial W&B callback for an experiment, or None when W&B is disabled. `search_keys`: the
    plan's searched keys, put at the top of each run's config and into its name."""
    mode = apply_wandb_mode(config)
    if mode == "disabled":
        return None
    folder = wandb_dir(experiment)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "offline" and config.wandb.mode == "auto":
        print(offline_note(folder))
    return TaggedWandbLoggerCallback(project=config.wandb.project, group=config.wandb.group_for(config.name),
                                     entity=config.wandb.entity,
                                     mode=mode, dir=str(folder), job_type="train", extra_tags=config.wandb.tags,
                                     search_keys=search_keys)
