"""Running and resuming an experiment: the Python API behind `cifar-tune run` and `resume`.

    config = load_config("configs/smoke.yaml", ["data.root=/data/cifar"])
    outcome = run_experiment(config)
    outcome.table            # one row per trial, also in <storage_path>/<name>/results.csv

Order of work: validate, derive the search plan and preflight it (no Ray, no data), load CIFAR-10
once, connect to Ray, then hand the data to every trial through the object store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cifar_tune.analysis.stats import fastest_variants
from cifar_tune.analysis.trials import (
    TrialRecord,
    format_table,
    read_table,
    read_trial_records,
    results_view,
    trial_table,
)
from cifar_tune.config import ConfigError, ExperimentConfig, dump_config_text, load_config
from cifar_tune.data import CifarData, load_data
from cifar_tune.names import BENCH_CSV, CHECKPOINT_SCORE, CONFIG_FILE, RESULTS_FILE, UNFINISHED
from cifar_tune.orchestrator.cluster import alive_nodes, check_storage, ray_session
from cifar_tune.orchestrator.export_hook import ExportCallback
from cifar_tune.orchestrator.preflight import preflight, resolve_precisions
from cifar_tune.orchestrator.search import param_space
from cifar_tune.plan import SearchPlan
from cifar_tune.tracking import apply_wandb_mode, trial_callback
from cifar_tune.trainables.trainable import train_cifar


@dataclass
class ExperimentOutcome:
    path: Path
    table: pd.DataFrame  # one row per trial (results.csv holds its documented columns)
    result_grid: Any  # ray.tune.ResultGrid
    bench: pd.DataFrame  # one row per trial x variant x batch size (bench.csv); empty without exports
    plan: SearchPlan


def make_trainable(config: ExperimentConfig, data: CifarData) -> Any:
    resources = {"cpu": config.resources.cpus_per_trial, "gpu": config.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_cifar, data=data), resources)


def make_scheduler(config: ExperimentConfig, plan: SearchPlan) -> Any:
    if config.tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=plan.max_epochs,
                         grace_period=min(config.tune.grace_period, plan.max_epochs),
                         reduction_factor=config.tune.reduction_factor)


def make_tuner(config: ExperimentConfig, plan: SearchPlan, data: CifarData,
               callbacks: Sequence[Any] = ()) -> tune.Tuner:
    storage = str(config.experiment_dir.parent) if config.storage_is_local() else config.storage_path
    return tune.Tuner(
        make_trainable(config, data),
        param_space=param_space(config, plan),
        tune_config=tune.TuneConfig(
            metric=config.tune.metric, mode=config.tune.mode, num_samples=config.tune.num_samples,
            max_concurrent_trials=config.tune.max_concurrent_trials, scheduler=make_scheduler(config, plan),
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


@contextlib.contextmanager
def _quiet_snapshot_warning() -> Iterator[None]:
    """num_to_keep=1 makes Tune snapshot its state after every checkpoint, i.e. every epoch. That
    is what we want (a resume loses at most one epoch), so its "snapshotting too often" warning is
    noise. Tune reads the threshold when fit() starts; it is restored afterwards."""
    key = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
    before = os.environ.get(key)
    os.environ.setdefault(key, "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def _check_fresh(config: ExperimentConfig) -> None:
    """Never start a new experiment on top of an old one: its results would be mixed or lost.
    (A cheap early check; `_claim` below is the one that holds against a concurrent run.)"""
    folder = config.experiment_dir
    if config.storage_is_local() and folder.exists() and any(folder.iterdir()):
        raise ConfigError(
            f"name: experiment directory {folder} already exists; resume it with "
            f"`cifar-tune resume {folder}` or choose another name (--set name=...)")


@contextlib.contextmanager
def _claim(config: ExperimentConfig) -> Iterator[None]:
    """Claim the experiment folder for this run, atomically: the saved config is created with
    O_EXCL, so of two runs started together with one name exactly one gets it; the other stops with
    a ConfigError (exit code 2) before it writes anything. Released if the run fails to start."""
    if not config.storage_is_local():  # cloud storage: Tune's own checks only, for now
        yield
        return
    folder = config.experiment_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / CONFIG_FILE, "x") as f:
            f.write(dump_config_text(config))
    except FileExistsError:
        if not folder.is_dir():  # a file where a folder of the path should be
            raise ConfigError(f"storage_path {config.storage_path!r}: cannot write the experiment folder {folder} "
                              "(a file is in the way); choose a writable storage_path") from None
        raise ConfigError(f"name: experiment directory {folder} was just claimed by another run of the same name; "
                          "choose another name (--set name=...)") from None
    except OSError as exc:
        raise ConfigError(f"storage_path {config.storage_path!r}: cannot write the experiment folder {folder} "
                          f"({exc.strerror or exc}); choose a writable storage_path") from None
    started = False
    try:
        yield
        started = True
    finally:
        if not started and not any(p.name != CONFIG_FILE for p in folder.iterdir()):
            (folder / CONFIG_FILE).unlink(missing_ok=True)  # nothing else written: leave no trace
            folder.rmdir()


def _records_from_grid(grid: Any) -> list[TrialRecord]:
    """Trial records from Tune's ResultGrid, for storage this process cannot read as files."""
    records = []
    for result in grid:
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        records.append(TrialRecord(path=str(result.path), params=result.config or {}, history=history,
                                   tune_status="ERROR" if result.error is not None else None,
                                   error=str(result.error) if result.error is not None else ""))
    return records


def _finish(config: ExperimentConfig, plan: SearchPlan, path: Path, grid: Any, quiet: bool) -> ExperimentOutcome:
    if config.storage_is_local():
        table = trial_table(read_trial_records(path), plan.columns)
        results_view(table, plan.columns).to_csv(path / RESULTS_FILE, index=False)
    else:
        table = trial_table(_records_from_grid(grid), plan.columns)
    bench = read_table(path / BENCH_CSV)
    if not quiet:
        print(f"\nResults of {config.name} ({path}):")
        print(format_table(table, plan.columns))
        unfinished = int((table["status"] == UNFINISHED).sum())
        if unfinished:
            print(f"\nInterrupted: {unfinished} trial(s) unfinished. Finish them with: cifar-tune resume {path}")
        fastest = fastest_variants(bench)
        if not fastest.empty:
            print("\nDeployment: fastest parity-checked variant per precision, speedup over eager fp32 "
                  f"(p50 latency, mean of per-trial ratios; details in {path / BENCH_CSV}):")
            print(fastest.to_string(index=False, float_format=lambda v: f"{v:.2f}x"))
    return ExperimentOutcome(path, table, grid, bench, plan)


def _callbacks(config: ExperimentConfig, plan: SearchPlan, data: CifarData, extra: Sequence[Any]) -> list[Any]:
    hooks: list[Any] = [ExportCallback(config, plan, data)] if config.export.enabled else []
    wandb_hook = trial_callback(config, config.experiment_dir) if config.storage_is_local() else None
    return hooks + ([wandb_hook] if wandb_hook else []) + list(extra)


def run_experiment(config: ExperimentConfig, callbacks: Sequence[Any] = (), quiet: bool = False) -> ExperimentOutcome:
    """Run every trial of `config` on Ray Tune and return the results table."""
    config, notes = resolve_precisions(config)
    for line in [] if quiet else notes:
        print(line)
    plan = SearchPlan.of(config)
    preflight(config, plan)
    _check_fresh(config)
    data = load_data(config.data)
    with _claim(config), ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        with _quiet_snapshot_warning():
            grid = make_tuner(config, plan, data, _callbacks(config, plan, data, callbacks)).fit()
    return _finish(config, plan, Path(grid.experiment_path), grid, quiet)


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
    config, _ = resolve_precisions(config)  # only an experiment saved before `auto` was expanded has one
    plan = SearchPlan.of(config)
    apply_wandb_mode(config)  # Tune restores the run's W&B callback; W&B must be told its mode again
    preflight(config, plan)
    data = load_data(config.data)
    with ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        tuner = tune.Tuner.restore(str(path), trainable=make_trainable(config, data),
                                   resume_unfinished=True, resume_errored=True)
        with _quiet_snapshot_warning():
            grid = tuner.fit()
    return _finish(config, plan, path, grid, quiet)
