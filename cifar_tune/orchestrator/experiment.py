"""Running and resuming an experiment: the Python API behind `cifar-tune run` and `resume`.

    config = load_config("configs/smoke.yaml", ["data.root=/data/cifar"])
    outcome = run_experiment(config)
    outcome.table            # one row per trial, also in <storage_path>/<name>/results.csv

storage_path may be a local folder or cloud storage (s3://bucket/prefix, ...): the saved config,
results.csv, bench.csv, exports.json and every trial's export/ files go there either way
(cifar_tune.storage), and `resume` takes the experiment's URI as well as a local path.

Order of work: validate, derive the search plan and preflight it (no Ray, no data), load CIFAR-10
once, connect to Ray, then hand the data to every trial through the object store.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from cifar_tune.analysis.load import read_records
from cifar_tune.analysis.stats import fastest_variants
from cifar_tune.analysis.trials import format_table, results_view, trial_table
from cifar_tune.checkpoints import study_writes
from cifar_tune.compat import old_module_paths
from cifar_tune.config import ConfigError, ExperimentConfig, dump_config_text, load_config
from cifar_tune.data import CifarData, load_data
from cifar_tune.faults import current_faults
from cifar_tune.names import (
    BENCH_CSV,
    CHECKPOINT_SCORE,
    CONFIG_FILE,
    ERROR,
    RESULTS_FILE,
    TIMING_CSV,
    TIMING_ROUNDS_CSV,
    UNFINISHED,
)
from cifar_tune.orchestrator.cluster import alive_nodes, check_storage, ray_session
from cifar_tune.orchestrator.export_hook import ExportCallback
from cifar_tune.orchestrator.interrupt import GracefulInterrupt, sigint_restored
from cifar_tune.orchestrator.param_space import param_space
from cifar_tune.orchestrator.preflight import preflight
from cifar_tune.orchestrator.retention import KeepLatestCheckpoint
from cifar_tune.orchestrator.timing import time_in_session
from cifar_tune.search import SearchPlan, plan_experiment
from cifar_tune.storage import Location, StorageError
from cifar_tune.tracking import trial_callback
from cifar_tune.trainables.occupancy import find_ledger, start_ledger
from cifar_tune.trainables.trainable import train_cifar
from cifar_tune.wandb_setup import apply_wandb_mode

TIMING_FILES = (TIMING_CSV, TIMING_ROUNDS_CSV)  # may precede a run: `cifar-tune time` before `run`


@dataclass
class ExperimentOutcome:
    location: Location  # <storage_path>/<name>, local or in cloud storage
    table: pd.DataFrame  # one row per trial (results.csv holds its documented columns)
    result_grid: Any  # ray.tune.ResultGrid
    bench: pd.DataFrame  # one row per trial x variant x batch size (bench.csv); empty without exports
    plan: SearchPlan

    @property
    def path(self) -> Path:
        """The experiment folder, for local storage (cloud storage: use `location`)."""
        return self.location.local_path


def make_trainable(config: ExperimentConfig, data: CifarData) -> Any:
    resources = {"cpu": config.resources.cpus_per_trial, "gpu": config.resources.gpus_per_trial}
    # The tests' injected faults travel with the data, never in the trial config (cifar_tune/faults.py).
    return tune.with_resources(tune.with_parameters(train_cifar, data=data, faults=current_faults()), resources)


class LedgerCallback(tune.Callback):
    """A trial that errors or ends leaves the run's DeviceLedger (trainables/occupancy.py), even if
    it died mid-epoch: else it would count as sharing its device until the run ends. The ledger is
    looked up by name, so the callback Tune restores on `resume` finds that run's ledger."""

    def _leave(self, trial: Any) -> None:
        ledger = find_ledger()
        if ledger is not None:
            ledger.leave.remote(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._leave(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._leave(trial)


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
            # A finished trial's worker process takes the next trial instead of a new process
            # importing torch again (seconds of CPU per trial; benchmarks/scale.py). The Trainer sets
            # every global it depends on (seed, precision flags) for each trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=storage,
            # Tune keeps every checkpoint; KeepLatestCheckpoint deletes all but each trial's latest
            # (orchestrator/retention.py says why Tune's num_to_keep is not used).
            checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=CHECKPOINT_SCORE,
                                                    checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            callbacks=list(callbacks),
        ),
    )


@contextlib.contextmanager
def _cwd_that_outlives_the_job() -> Iterator[None]:
    """Under `ray job submit --working-dir`, the driver runs inside Ray's unpacked copy of that
    folder (<temp dir>/session_*/runtime_resources/working_dir_files/...). When several nodes share
    one Ray temp dir (several `ray start` on one machine), another node's runtime-env agent deletes
    that copy once its own workers are done with it, and Ray's storage code, which calls
    os.getcwd() while it lists cloud storage at the end of Tuner.fit, fails with
    FileNotFoundError. So Tune's loop runs from the system's temp folder; the working directory is
    restored afterwards if it still exists. Everything cifar-tune needs is an absolute path by then.
    (The deletion has also been seen before Tune started: then the cwd is already gone here.)"""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        os.chdir(tempfile.gettempdir())
        yield
        return
    if "runtime_resources" not in Path(cwd).parts:
        yield
        return
    os.chdir(tempfile.gettempdir())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.chdir(cwd)


def _storage_error(config: ExperimentConfig, folder: Location, reason: object) -> ConfigError:
    return ConfigError(f"storage_path {config.storage_path!r}: cannot write the experiment folder {folder} "
                       f"({reason}); choose a writable storage_path")


def _check_fresh(config: ExperimentConfig, folder: Location) -> None:
    """Never start a new experiment on top of an old one: its results would be mixed or lost.
    (A cheap early check; `_claim` below is the one that holds against a concurrent run.)"""
    try:
        taken = bool(set(folder.listdir()) - set(TIMING_FILES))
    except OSError as exc:  # e.g. a bucket that does not exist, or no permission to list it
        raise _storage_error(config, folder, exc) from None
    if taken:
        raise ConfigError(
            f"name: experiment directory {folder} already exists; resume it with "
            f"`cifar-tune resume {folder}` or choose another name (--set name=...)")


@contextlib.contextmanager
def _claim(config: ExperimentConfig, folder: Location) -> Iterator[None]:
    """Claim the experiment folder for this run, atomically: the saved config is created only if
    absent (O_EXCL on disk, a conditional write on S3), so of two runs started together with one
    name exactly one gets it; the other stops with a ConfigError (exit code 2) before it writes
    anything. Released if the run fails to start."""
    try:
        folder.create_exclusive(CONFIG_FILE, dump_config_text(config))
    except FileExistsError:
        if folder.is_local and not folder.is_dir():  # a file where a folder of the path should be
            raise _storage_error(config, folder, "a file is in the way") from None
        raise ConfigError(f"name: experiment directory {folder} was just claimed by another run of the same name; "
                          "choose another name (--set name=...)") from None
    except StorageError as exc:
        raise _storage_error(config, folder, exc) from None
    except OSError as exc:
        raise _storage_error(config, folder, exc.strerror or exc) from None
    started = False
    try:
        yield
        started = True
    finally:
        if not started and set(folder.listdir()) - set(TIMING_FILES) == {CONFIG_FILE}:  # leave no trace
            folder.delete(CONFIG_FILE)
            folder.delete_dir_if_empty()


def _finish(config: ExperimentConfig, plan: SearchPlan, path: Location, grid: Any, quiet: bool) -> ExperimentOutcome:
    # The table is read from the files Tune wrote, as `cifar-tune analyze` reads them, so
    # results.csv and the analysis agree; from cloud storage through a copy of the small files.
    table = trial_table(read_records(path), plan.columns)
    path.write_csv(RESULTS_FILE, results_view(table, plan.columns))
    bench = path.read_csv(BENCH_CSV)
    if not quiet:
        print(f"\nResults of {config.name} ({path}):")
        print(format_table(table, plan.columns))
        unfinished = int((table["status"] == UNFINISHED).sum())
        if unfinished:
            print(f"\nInterrupted: {unfinished} trial(s) unfinished. Finish them with: cifar-tune resume {path}")
        fastest = fastest_variants(bench)
        if not fastest.empty:
            print("\nDeployment: fastest parity-checked variant per precision, speedup over eager fp32 "
                  f"(p50 latency, geometric mean of per-trial ratios; details in {path / BENCH_CSV}):")
            print(fastest.to_string(index=False, float_format=lambda v: f"{v:.2f}x"))
    return ExperimentOutcome(path, table, grid, bench, plan)


def _callbacks(config: ExperimentConfig, plan: SearchPlan, data: CifarData, extra: Sequence[Any]) -> list[Any]:
    hooks: list[Any] = [GracefulInterrupt(), LedgerCallback(), KeepLatestCheckpoint()]
    hooks += [ExportCallback(config, plan, data)] if config.export.enabled else []
    wandb_hook = trial_callback(config, config.experiment_location(), plan.columns)
    return hooks + ([wandb_hook] if wandb_hook else []) + list(extra)


def _fit(tuner: tune.Tuner) -> Any:
    """Tune's loop, with a DeviceLedger for the trials to count who shares their device."""
    ledger = start_ledger()  # held here: Ray ends a named actor once no handle to it is left
    with _cwd_that_outlives_the_job(), sigint_restored():
        grid = tuner.fit()
    del ledger
    return grid


def _time_if_asked(config: ExperimentConfig, data: CifarData, folder: Location, table: pd.DataFrame,
                   quiet: bool) -> None:
    """`timing.enabled`: the isolated timing, once every trial has ended (and none was timed before)."""
    if not config.timing.enabled:
        return
    if folder.is_file(TIMING_CSV):
        if not quiet:
            print(f"\ntiming: {folder / TIMING_CSV} exists already; `cifar-tune time {folder}` measures again")
    elif table["status"].isin([ERROR, UNFINISHED]).any():
        if not quiet:
            print(f"\ntiming: skipped, as not every trial finished; once they have: cifar-tune time {folder}")
    else:
        try:
            time_in_session(config, data, folder, quiet)
        except Exception as exc:  # the trials' results are written: a timing failure must not cost them
            print(f"\ntiming failed ({type(exc).__name__}: {exc}); the trials' results stand. Measure again "
                  f"with: cifar-tune time {folder}")


def run_experiment(config: ExperimentConfig, callbacks: Sequence[Any] = (), quiet: bool = False) -> ExperimentOutcome:
    """Run every trial of `config` on Ray Tune and return the results table."""
    config, plan, notes = plan_experiment(config)
    for line in [] if quiet else notes:
        print(line)
    preflight(config, plan)
    warning = study_writes(config, plan).warning()
    if warning and not quiet:
        print(warning)
    folder = config.experiment_location()
    _check_fresh(config, folder)
    data = load_data(config.data)
    with _claim(config, folder), ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        grid = _fit(make_tuner(config, plan, data, _callbacks(config, plan, data, callbacks)))
        outcome = _finish(config, plan, folder, grid, quiet)
        _time_if_asked(config, data, folder, outcome.table, quiet)
    return outcome


def resume_experiment(path: str | Path, address: str | None = None, quiet: bool = False) -> ExperimentOutcome:
    """Finish an interrupted experiment (a local folder or a cloud URI): unfinished trials continue,
    errored ones retry from their last checkpoint, finished ones are left alone."""
    path = Location.of(path)
    if not path.is_file(CONFIG_FILE) or not tune.Tuner.can_restore(path.uri):
        raise ConfigError(f"{path}: not a cifar-tune experiment directory (no {CONFIG_FILE} or Tune state); "
                          "give the folder <storage_path>/<name> that `cifar-tune run` created")
    config = load_config(path / CONFIG_FILE)
    if address:
        config.ray.address = address
    config, plan, _ = plan_experiment(config)  # only an experiment saved before `auto` was expanded has one
    apply_wandb_mode(config)  # Tune restores the run's W&B callback; W&B must be told its mode again
    preflight(config, plan)
    data = load_data(config.data)
    with ray_session(config.ray.address):
        check_storage(config, alive_nodes())
        with old_module_paths():  # Tune's state of an older experiment names classes that moved since
            tuner = tune.Tuner.restore(path.uri, trainable=make_trainable(config, data),
                                       resume_unfinished=True, resume_errored=True)
            grid = _fit(tuner)
        outcome = _finish(config, plan, path, grid, quiet)
        _time_if_asked(config, data, path, outcome.table, quiet)
    return outcome
