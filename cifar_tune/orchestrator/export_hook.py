"""The post-trial hook (`ExportCallback`): when a trial completes, a Ray task exports its best
weights and checks every variant's parity (cifar_tune.export_worker, what the task runs) while the
experiment carries on; once every export is in, one trial's variants are timed once, on a node to
itself.

Contract: an export never takes a slot a pending trial could use; the callback only launches tasks
(Tune runs it in its driver loop) and waits for them in `on_experiment_end`, at most
`export.timeout_s` each; a failed or timed-out export or timing is recorded with its reason
(exports.json, bench.csv) and never fails the experiment. The tasks read and write the trial's
files in the experiment's storage, so they run on any node. Narrative: docs/deployment.md.
"""

from __future__ import annotations

import json
import math
import posixpath
import time
from typing import Any

import pandas as pd
import ray
from pydantic import BaseModel
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cifar_tune.config import ExperimentConfig, ExportConfig
from cifar_tune.data import CifarData, load_data
from cifar_tune.errors import short_error
from cifar_tune.export_worker import export_trial, time_trial_export
from cifar_tune.faults import current_faults
from cifar_tune.names import BENCH_CSV, EXPORT_CACHE_DIR, EXPORT_DIR, EXPORTS_JSON
from cifar_tune.orchestrator.cluster import isolated_node
from cifar_tune.search import SearchPlan, search_value
from cifar_tune.storage import Location
from cifar_tune.variants import VARIANTS

# On a GPU, a fresh worker per export (max_calls=1), so a finished export's CUDA context leaves the
# GPU; set in the decorator because Ray ignores max_calls given through .options() (ray issue
# 47767). On CPUs, workers are reused: starting one costs seconds and holds nothing. An export
# whose worker dies is retried once (Ray's default is 3), then recorded as failed.
export_on_cpu = ray.remote(max_retries=1)(export_trial)
export_on_gpu = ray.remote(max_calls=1, max_retries=1)(export_trial)
# Timing: a fresh worker (no other variant's caches or threads), not retried (a crash is recorded).
time_on_node = ray.remote(max_calls=1, max_retries=0)(time_trial_export)


def export_gpus(config: ExperimentConfig) -> float:
    """An export's GPU share. By default the trials' own share when they train on GPUs: an export
    then fits wherever a trial fits, and gets a freed slice as soon as a trial ends, instead of
    waiting for a whole GPU that Tune keeps refilling with pending trials."""
    if config.export.gpus is not None:
        return config.export.gpus
    if ray.cluster_resources().get("GPU", 0) == 0:
        return 0.0
    return config.resources.gpus_per_trial or 1.0


LATENCY_COLUMNS = ["batch_size", "runs", "first_call_ms", "peak_memory_mb", "p50_ms", "p50_ci_low_ms", "p50_ci_high_ms",
                   "p90_ms", "p99_ms", "mean_ms", "images_per_s", "timer", "energy_mj_per_image", "energy_source",
                   "speedup", "speedup_ci_low", "speedup_ci_high", "latency_method", "error",
                   "threads", "load_average_1m"]  # the timing's: they replace the export's own


def with_latency(table: pd.DataFrame, latency: dict[str, Any], batch_sizes: list[int]) -> pd.DataFrame:
    """bench.csv's rows: each trial's per-variant rows times the batch sizes, carrying the one timing
    of the run (`latency["bench"]`) for their variant. A row already timed (an earlier run, an
    older version) keeps its own latency unless this run timed its variant again: the newest timing
    stands for every trial. Without a timing, latency stays empty and `latency_method` says why."""
    if table.empty:
        return table
    if "batch_size" not in table:
        table = table.assign(batch_size=math.nan)
    untimed = table[table["batch_size"].isna()].drop(columns="batch_size")
    timed = table[table["batch_size"].notna()]
    timing = pd.DataFrame(latency.get("bench", []))
    if timing.empty:
        why = f"not measured: {latency['error']}" if "error" in latency else "not measured"
        timing = pd.DataFrame([{"variant": v, "batch_size": b, "latency_method": why}
                               for v in untimed["variant"].unique() for b in batch_sizes])
    timing = timing[["variant", *[c for c in LATENCY_COLUMNS if c in timing]]]
    fresh = untimed.drop(columns=[c for c in timing if c in untimed and c != "variant"]).merge(timing, on="variant",
                                                                                              how="left")
    if not timed.empty and "bench" in latency:  # the newest timing replaces older latency of its variants
        again = timed["variant"].isin(timing["variant"])
        retimed = timed[again].drop(columns=[c for c in timing if c in timed and c not in ("variant", "batch_size")])
        timed = pd.concat([timed[~again], retimed.merge(timing, on=["variant", "batch_size"], how="left")])
    return pd.concat([timed, fresh], ignore_index=True)


def _plain(value: Any) -> Any:
    """A config as plain data, also one unpickled from an older version: its objects' __dict__ may
    lack fields added since, which validation then fills with their defaults."""
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.__dict__.items()}
    return value


class ExportCallback(tune.Callback):
    """Launches `export_trial` for every trial that completes; collects them at the end and writes
    bench.csv and exports.json into the experiment directory (merged with those of earlier runs of
    the same experiment, so a resumed experiment keeps the exports it already had)."""

    def __init__(self, config: ExperimentConfig, plan: SearchPlan, data: CifarData | None = None) -> None:
        self.config = config
        self.search_columns = plan.columns
        self._loaded = data  # the experiment's data when the caller has it; else read on first need
        self._data_ref: Any = None
        self.pending: dict[str, tuple[Any, dict[str, Any]]] = {}  # trial id -> (ObjectRef, row keys)
        # Exports waiting for room that no pending trial needs: (trial id, launch(), row keys, GPU share).
        self.queued: list[tuple[str, Any, dict[str, Any], float]] = []
        self._checked_at = -math.inf
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, tuple[str, str]] = {}  # trial id -> (checkpoint URI, export folder URI)
        self.latency: dict[str, Any] = {}  # the one timing of this run: {"bench": rows, ...} or {"error": ...}
        self.experiment_dir: Location | None = None  # where Tune really writes, learnt from the trials
        self.faults = current_faults()  # what the tests inject (cifar_tune/faults.py): none otherwise
        self._export: ExportConfig | None = None  # the export settings of this run, fixed at its first export
        self._leader: Any = None  # the run's first export while it is alone (see launch_ready), else None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (tuner.pkl) and restores them on resume.
        # Object refs die with the Ray session; the config travels as plain data, so the pickle
        # does not depend on where the config classes live.
        return {"config": self.config.model_dump(mode="json"), "search_columns": self.search_columns}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also reads the state pickled before 0.2 (a config object, plus fields no longer kept).
        self.config = ExperimentConfig.model_validate(_plain(state["config"]), context={"saved": True})
        self.search_columns = list(state["search_columns"])
        self._loaded, self._data_ref, self.pending, self.outcomes = None, None, {}, {}
        self.queued, self._checked_at = [], -math.inf
        self.sources, self.latency = {}, {}
        self.experiment_dir = None
        self.faults = current_faults()  # read again on resume, never pickled
        self._export = None
        self._leader = None

    def _data(self) -> Any:
        """Test images and calibration images in the object store, read on first need."""
        if self._data_ref is None:
            data = self._loaded or load_data(self.config.data)
            self._data_ref = ray.put((data.test_x, data.test_y, data.train_x[: self.config.export.calibration_images]))
        return self._data_ref

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        checkpoint = trial.checkpoint
        if checkpoint is None or "test_acc" not in (trial.last_result or {}):
            return  # stopped early by the scheduler: no final weights to export
        train = trial.config.get("train", {})
        # The trial's own folder tells where this run writes, even for an experiment moved since;
        # trial.path is a path on the storage's filesystem (for s3://bucket/x: bucket/x/...), as is
        # the checkpoint's: the task gets both as URIs (see cifar_tune/export_worker.py).
        trial_dir = Location.of(self.config.storage_path).at(trial.path)
        self.experiment_dir = trial_dir.at(posixpath.dirname(trial.path))
        checkpoint_uri, out_uri = trial_dir.at(checkpoint.path).uri, (trial_dir / EXPORT_DIR).uri
        row = {"trial_id": trial.trial_id, "precision": train.get("precision"),
               **{c: search_value(trial.config, c) for c in self.search_columns}}
        export = self.export_settings()
        gpus = export_gpus(self.config)
        task = export_on_gpu if gpus > 0 else export_on_cpu
        launch = lambda: task.options(num_cpus=export.cpus, num_gpus=gpus).remote(  # noqa: E731
            checkpoint_uri, out_uri, self._data(), export.model_dump(),
            self.config.data.root, (self.experiment_dir / EXPORT_CACHE_DIR).uri, self.faults.export_fault(train.get("seed")))
        self.queued.append((trial.trial_id, launch, row, gpus))
        self.sources[trial.trial_id] = (checkpoint_uri, out_uri)
        self.launch_ready(trials, force_check=True)

    def export_settings(self) -> ExportConfig:
        """`export` as this run's trials are exported. `variants: null` means every variant the
        device runs, decided once per experiment: where a resumed experiment's bench.csv already
        holds exported trials, the rest build exactly the variants those have (a newer version may
        know more), so its deployment tables compare like with like."""
        if self._export is None:
            export = self.config.export
            earlier = self.experiment_dir.read_csv(BENCH_CSV) if self.experiment_dir is not None else pd.DataFrame()
            if export.variants is None and "variant" in earlier:
                built = set(earlier["variant"])
                export = ExportConfig.model_validate({**export.model_dump(), "variants": [v for v in VARIANTS if v in built]})
            self._export = export
        return self._export

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self.launch_ready(trials)

    def launch_ready(self, trials: list, force_check: bool = False) -> None:
        """Launch the queued exports that cannot hold a trial back: all of them once no trial is
        PENDING; before that, only where the cluster has room for the export *and* for every pending
        trial at once (cores the trials leave idle). Resources are read at most once a second.
        The run's first export goes alone while its export cache is empty: the others then reuse the
        ONNX graph and AOTInductor package it leaves there, where 16 at once would each make their own
        (about 5 CPU-s each for model.onnx here: benchmarks/RESULTS.md, "Scale")."""
        if not self.queued or self._waiting_for_leader():
            return
        pending = [t for t in trials if t.status == "PENDING"]
        if pending:
            now = time.monotonic()
            if not force_check and now - self._checked_at < 1.0:
                return
            self._checked_at = now
            free = ray.available_resources()
            cpus = free.get("CPU", 0.0) - len(pending) * self.config.resources.cpus_per_trial
            gpus = free.get("GPU", 0.0) - len(pending) * self.config.resources.gpus_per_trial
        while self.queued:
            trial_id, launch, row, export_gpu = self.queued[0]
            if pending:
                if cpus < self.config.export.cpus or gpus < export_gpu:
                    return
                cpus, gpus = cpus - self.config.export.cpus, gpus - export_gpu
            first = not self.pending  # launched exports stay in `pending` until the run's end
            self.queued.pop(0)
            self.pending[trial_id] = (launch(), row)
            if first and (self.experiment_dir is None or not (self.experiment_dir / EXPORT_CACHE_DIR).listdir()):
                self._leader = self.pending[trial_id][0]
                return

    def _waiting_for_leader(self, timeout_s: float = 0.0) -> bool:
        """Whether the run's first export is still out alone (waiting up to `timeout_s` for it)."""
        if self._leader is not None:
            ready, _ = ray.wait([self._leader], timeout=timeout_s)
            if not ready:
                return True
            self._leader = None
        return False

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._waiting_for_leader(self.config.export.timeout_s)  # then, done or not, the others go
        self._leader = None
        self.launch_ready([])  # nothing is pending any more: whatever still waits goes now
        self.collect(self.config.export.timeout_s)
        self.time_once(self.config.export.timeout_s)
        if self.experiment_dir is not None:
            self.write(self.experiment_dir)

    def time_once(self, timeout_s: float) -> None:
        """Time the variants of the first trial (by id) whose export succeeded, once every export is
        in: one task holding every CPU of a node, or a whole GPU and `export.cpus` where the exports
        use GPUs, so nothing else runs beside it."""
        exported = sorted(t for t, o in self.outcomes.items() if o["status"] == "ok" and t in self.sources)
        if not exported:
            return
        trial_id = exported[0]
        checkpoint_uri, out_uri = self.sources[trial_id]
        names = [row["variant"] for row in self.outcomes[trial_id]["result"].get("variants", [])]
        export = self.export_settings()
        gpus = 1.0 if export_gpus(self.config) > 0 else 0.0
        node = isolated_node(ray.nodes(), gpus, "export.gpus")
        cpus = export.cpus if gpus else node["Resources"].get("CPU", export.cpus)
        method = (f"once per variant on trial {trial_id}'s export after every export, on a node to itself "
                  f"({cpus:g} CPUs{' and a whole GPU' if gpus else ''} reserved, {{threads}} inference threads), "
                  f"{export.rounds} interleaved rounds")
        task = time_on_node.options(num_cpus=cpus, num_gpus=gpus,
                                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
        cache = (self.experiment_dir / EXPORT_CACHE_DIR).uri if self.experiment_dir is not None else None
        ref = task.remote(checkpoint_uri, out_uri, export.model_dump(), names, method, self.config.data.root, cache)
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            ray.cancel(ref, force=True)
            self.latency = {"trial_id": trial_id, "error": f"not done within export.timeout_s={timeout_s:g}"}
            return
        try:
            self.latency = {"trial_id": trial_id, **ray.get(ref)}
        except Exception as exc:  # recorded, never raised: the exports' parity rows stand without it
            self.latency = {"trial_id": trial_id, "error": short_error(exc)}

    def collect(self, timeout_s: float) -> None:
        """Wait for the launched exports. `timeout_s` bounds the wait for the *next* one to finish,
        so exports queued behind others on a busy GPU each get their turn; once none finishes
        for that long, the rest are cancelled and recorded as timeouts."""
        waiting = {ref: (trial_id, row) for trial_id, (ref, row) in self.pending.items()}
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=timeout_s)
            if not ready:
                break
            trial_id, row = waiting.pop(ready[0])
            try:
                self.outcomes[trial_id] = {**row, "status": "ok", "result": ray.get(ready[0])}
            except Exception as exc:  # an export failure is recorded, never raised
                self.outcomes[trial_id] = {**row, "status": "failed", "reason": short_error(exc)}
        for ref, (trial_id, row) in waiting.items():
            ray.cancel(ref, force=True)
            self.outcomes[trial_id] = {**row, "status": "timeout",
                                       "reason": f"no export finished within export.timeout_s={timeout_s:g}"}
        self.pending.clear()

    def write(self, experiment_dir: Location) -> pd.DataFrame:
        """bench.csv and exports.json; rows of trials exported by an earlier run are kept."""
        summary = json.loads(experiment_dir.read_text(EXPORTS_JSON)) if experiment_dir.is_file(EXPORTS_JSON) else {}
        earlier = experiment_dir.read_csv(BENCH_CSV)
        if not earlier.empty:
            earlier = earlier[~earlier["trial_id"].isin(list(self.outcomes))]
        rows = []
        for trial_id, outcome in self.outcomes.items():
            keys = {k: v for k, v in outcome.items() if k not in ("result", "status", "reason")}
            result = outcome.get("result") or {}
            # per variant (this version: untimed) or per variant x batch size (timed, older versions)
            for bench in result.get("bench") or result.get("variants", []):
                rows.append({**keys, **bench})
            summary[trial_id] = {k: v for k, v in outcome.items() if k != "result"}
        table = with_latency(pd.concat([earlier, pd.DataFrame(rows)], ignore_index=True), self.latency,
                             self.config.export.batch_sizes)
        experiment_dir.write_csv(BENCH_CSV, table)
        experiment_dir.write_text(EXPORTS_JSON, json.dumps(summary, indent=2, default=str))
        return table

