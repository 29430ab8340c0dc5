"""Weights & Biases during a run: the per-trial logging callback (mode and folders: wandb_setup.py).

Per-trial runs are logged through Ray Tune's own `WandbLoggerCallback`: each trial gets a logging
actor of its own, so a slow or unreachable W&B server delays that actor, never the training.
Runs are grouped by experiment name (job_type `train`), named `<precision>-s<seed>` (plus the other
searched values), tagged `precision:<p>` and `seed:<s>`, carry the trial config with `precision`,
`seed` and every searched key also at its top level (what a W&B filter or grouping reads), and their
summary holds the last (final) metrics. The run id is the trial id, so a resumed trial continues its
run. Files go to `<experiment dir>/wandb` unless WANDB_DIR is set (wandb_setup.wandb_dir).
"""

from __future__ import annotations

from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from cifar_tune.search import search_value
from cifar_tune.storage import Location
from cifar_tune.wandb_setup import apply_wandb_mode, offline_note, wandb_dir


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

    def __init__(self, *args: Any, extra_tags: list[str] | None = None, search_keys: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_tags = list(extra_tags or [])
        self.search_keys = list(search_keys or [])

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
        top = run_keys(trial.config, self.search_keys)
        config = {**top, **init_kwargs.get("config", {})}
        super()._start_logging_actor(trial, exclude_results, **{**init_kwargs, "tags": tags, "config": config,
                                                                "name": run_name(top)})


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
