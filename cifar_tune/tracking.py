"""Weights & Biases: which mode to run in, where its files go, and the per-trial logging callback.

Per-trial runs are logged through Ray Tune's own `WandbLoggerCallback`: each trial gets a logging
actor of its own, so a slow or unreachable W&B server delays that actor, never the training.
Runs are grouped by experiment name, tagged `precision:<p>` and `seed:<s>`, carry the trial config,
and their summary holds the last (final) metrics. Files go to `<experiment dir>/wandb` unless
WANDB_DIR is set (with cloud storage: ~/.cache/cifar-tune/<name>/wandb, W&B writes local files).
No API key is ever passed as an argument or written anywhere by cifar-tune: W&B reads it from
WANDB_API_KEY or ~/.netrc itself.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from cifar_tune.storage import Location

WANDB_HOST = "api.wandb.ai"


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """'auto' -> 'online' with credentials, else 'offline'; other modes as given."""
    if mode != "auto":
        return mode
    return "online" if has_credentials() else "offline"


def wandb_dir(experiment: Location) -> Path:
    """Where W&B writes (it adds its own wandb/ folder): $WANDB_DIR if set, else the experiment
    folder on local storage, else ~/.cache/cifar-tune/<name> on this machine: W&B keeps its run
    files on local disk, also when the experiment's storage is a bucket."""
    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"])
    if experiment.is_local:
        return experiment.local_path
    return Path.home() / ".cache" / "cifar-tune" / experiment.name


def offline_note(folder: Path) -> str:
    return (f"W&B: no credentials found, logging offline under {folder / 'wandb'}; "
            f"upload later with `wandb sync {folder / 'wandb'}/offline-run-*`")


class _ClosingWandbLoggingActor(_WandbLoggingActor):
    """Ray's per-trial logging actor, which also waits for W&B to close the run's files.

    Ray kills the actor as soon as `run()` returns, i.e. right after wandb.finish(); the wandb-core
    process may then still be writing the run file (seen here: a 7-byte offline run, read back as
    empty). wandb.teardown() returns once that process has flushed and exited."""

    def run(self) -> Any:
        try:
            return super().run()
        finally:
            self._wandb.teardown()


class TaggedWandbLoggerCallback(WandbLoggerCallback):
    """Ray's W&B callback, plus tags from each trial's precision and seed; its logging actors
    close their runs completely before Ray ends them."""

    _logger_actor_cls = _ClosingWandbLoggingActor  # Ray's hook for the actor class

    def __init__(self, *args: Any, extra_tags: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_tags = list(extra_tags or [])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # After Ctrl-C, trials that were still running never got their "end" message, and Ray's
        # version would wait upload_timeout (30 minutes by default) for their actors before
        # killing them. Tell every actor to finish its run first: they close within seconds, and a
        # resumed trial continues the same W&B run (its id is the trial id).
        for trial in list(self._trial_logging_actors):
            self._signal_logging_actor_stop(trial=trial)
        super().on_experiment_end(trials, **info)

    def _start_logging_actor(self, trial: Any, exclude_results: list[str], **init_kwargs: Any) -> None:
        train = trial.config.get("train", {})
        tags = [f"precision:{train.get('precision')}", f"seed:{train.get('seed')}", *self.extra_tags]
        super()._start_logging_actor(trial, exclude_results, **{**init_kwargs, "tags": tags})


def apply_wandb_mode(config: Any) -> str:
    """Resolve `wandb.mode` for a run or a resume and tell W&B (and Ray's callback, which
    otherwise insists on an API key) through WANDB_MODE when it is offline. Returns the mode.
    A resume needs this too: Tune restores the experiment's W&B callback from its own state."""
    mode = resolve_mode(config.wandb.mode)
    if mode == "offline":
        os.environ["WANDB_MODE"] = mode
    return mode


def trial_callback(config: Any, experiment: Location) -> TaggedWandbLoggerCallback | None:
    """The per-trial W&B callback for an experiment, or None when W&B is disabled."""
    mode = apply_wandb_mode(config)
    if mode == "disabled":
        return None
    folder = wandb_dir(experiment)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "offline" and config.wandb.mode == "auto":
        print(offline_note(folder))
    return TaggedWandbLoggerCallback(project=config.wandb.project, group=config.name, entity=config.wandb.entity,
                                     mode=mode, dir=str(folder), job_type="train", extra_tags=config.wandb.tags)
