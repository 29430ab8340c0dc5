"""Running and resuming an experiment: the Python API behind `cifar-tune run` and `resume`.

    config = load_config("configs/smoke.yaml", ["data.root=/data/cifar"])
    outcome = run_experiment(config)
    outcome.table            # one row per trial, also in <storage_path>/<name>/results.csv

Order of work: validate and preflight (no Ray, no data), load CIFAR-10 once,
connect to Ray, then hand the data to every trial through the object store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cifar_tune.analysis.results import format_table, read_table, results_table, write_results
from cifar_tune.data import CifarData, load_data
from cifar_tune.orchestrator.cluster import alive_nodes, check_storage, ray_session
from cifar_tune.orchestrator.config import ConfigError, ExperimentConfig, dump_config, load_config
from cifar_tune.orchestrator.export_hook import BENCH_CSV, ExportCallback, fastest_variants
from cifar_tune.orchestrator.preflight import preflight
from cifar_tune.orchestrator.search import param_space, search_columns, searched_values
from cifar_tune.trainables.trainable import train_cifar

# num_to_keep=1 makes Tune snapshot its state after every checkpoint, i.e. every epoch. That is
# what we want (a resume loses at most one epoch), so its "snapshotting too often" warning is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

CONFIG_FILE = "cifar_tune_config.yaml"  # the validated config, saved beside Tune's own state
CHECKPOINT_SCORE = "val_acc"  # the checkpoint Tune keeps besides the latest: best validation accuracy


@dataclass
class ExperimentOutcome:
    path: Path
    table: pd.DataFrame  # one row per trial (results.csv)
    result_grid: Any  # ray.tune.ResultGrid
    bench: pd.DataFrame  # one row per trial x variant x batch size (bench.csv); empty without exports


def make_trainable(config: ExperimentConfig, data: CifarData) -> Any:
    resources = {"cpu": config.resources.cpus_per_trial, "gpu": config.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_cifar, data=data), resources)


def make_scheduler(config: ExperimentConfig) -> Any:
    if config.tune.scheduler == "fifo":
        return FIFOScheduler()
    max_epochs = max(searched_values(config, "epochs") or [config.train.epochs])
    return ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                         grace_period=min(config.tune.grace_period, max_epochs),
                         reduction_factor=config.tune.reduction_factor)


def make_tuner(config: ExperimentConfig, data: CifarData, callbacks: Sequence[Any] = ()) -> tune.Tuner:
    storage = str(config.experiment_dir.parent) if config.storage_is_local() else config.storage_path
    return tune.Tuner(
        make_trainable(config, data),
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            metric=config.tune.metric, mode=config.tune.mode, num_samples=config.tune.num_samples,
            max_concurrent_trials=config.tune.max_concurrent_trials, scheduler=make_scheduler(config),
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=storage,
            # num_to_keep=1 scored by val_acc: Tune keeps the best-validation checkpoint
            # and, always, the latest one (to resume from).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE,
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            callbacks=list(callbacks),
        ),
    )


def _check_fresh(config: ExperimentConfig) -> None:
    """Never start a new experiment on top of an old one: its results would be mixed or lost."""
    folder = config.experiment_dir
    if config.storage_is_local() and folder.exists() and any(folder.iterdir()):
        raise ConfigError(
            f"name: experiment directory {folder} already exists; resume it with "
            f"`cifar-tune resume {folder}` or choose another name (--set name=...)")


def _finish(config: ExperimentConfig, path: Path, grid: Any, quiet: bool) -> ExperimentOutcome:
    table = results_table(grid, search_columns(config))
    if config.storage_is_local():
        write_results(table, path)
    bench_path = path / BENCH_CSV
    bench = read_table(bench_path)
    if not quiet:
        print(f"\nResults of {config.name} ({path}):")
        print(format_table(table))
        fastest = fastest_variants(bench)
        if not fastest.empty:
            print("\nDeployment: fastest parity-checked variant per precision, speedup over eager fp32 "
                  f"(p50 latency; details in {bench_path}):")
            print(fastest.to_string(index=False, float_format=lambda v: f"{v:.2f}x"))
    return ExperimentOutcome(path, table, grid, bench)


def _callbacks(config: ExperimentConfig, data: CifarData, extra: Sequence[Any]) -> list[Any]:
    from cifar_tune.tracking import trial_callback

    hooks = [ExportCallback(config, search_columns(config), data)] if config.export.enabled else []
    wandb_hook = trial_callback(config, config.experiment_dir) if config.storage_is_local() else None
    return hooks + ([wandb_hook] if wandb_hook else []) + list(extra)


def run_experiment(config: ExperimentConfig, callbacks: Sequence[Any] = (), quiet: bool = False) -> ExperimentOutcome:
    """Run every trial of `config` on Ray Tune and return the results table."""
    preflight(config)
    _check_fresh(config)
    data = load_data(config.data)
    with ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        if config.storage_is_local():
            config.experiment_dir.mkdir(parents=True, exist_ok=True)
            dump_config(config, config.experiment_dir / CONFIG_FILE)
        grid = make_tuner(config, data, _callbacks(config, data, callbacks)).fit()
    return _finish(config, Path(grid.experiment_path), grid, quiet)


def resume_experiment(path: str | Path, address: str | None = None, quiet: bool = False) -> ExperimentOutcome:
    """Finish an interrupted experiment: unfinished trials continue, errored ones retry from their
    last checkpoint, finished ones are left alone."""
    path = Path(path).expanduser().resolve()
    if not (path / CONFIG_FILE).is_file() or not tune.Tuner.can_restore(str(path)):
        raise ConfigError(f"{path}: not a cifar-tune experiment directory (no {CONFIG_FILE} or Tune state); "
                          "give the folder <storage_path>/<name> that `cifar-tune run` created")
    config = load_config(path / CONFIG_FILE)
    if address:
        config.ray.address = address
    preflight(config)
    data = load_data(config.data)
    with ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        tuner = tune.Tuner.restore(str(path), trainable=make_trainable(config, data),
                                   resume_unfinished=True, resume_errored=True)
        grid = tuner.fit()
    return _finish(config, path, grid, quiet)
