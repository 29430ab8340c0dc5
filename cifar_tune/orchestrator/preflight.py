"""Checks made before anything expensive: can the trials' device run the precisions asked for,
and can the trials get that device at all? Also the dry-run plan.
"""

from __future__ import annotations

import importlib.util

import torch

from cifar_tune.checkpoints import study_writes
from cifar_tune.config import ConfigError, ExperimentConfig
from cifar_tune.orchestrator.cluster import effective_address, local_cpus
from cifar_tune.precision import device_problem
from cifar_tune.search import SearchPlan, trial_device


def preflight(config: ExperimentConfig, plan: SearchPlan) -> str:
    """Raise ConfigError for a plan that cannot run well; return the trials' device type."""
    device = trial_device(config)
    embedded = effective_address(config.ray.address) is None
    if device == "cuda" and embedded and not torch.cuda.is_available():
        raise ConfigError(
            f"resources.gpus_per_trial: {config.resources.gpus_per_trial} but this machine has no usable GPU "
            "and ray.address is null (embedded local Ray); set resources.gpus_per_trial: 0 or join a GPU "
            "cluster with --address")
    if config.timing.enabled:
        check_timing_fits(config)
    where = "search.precision" if plan.searches("precision") else "train.precision"
    if config.export.enabled:
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"export.enabled: true needs {', '.join(missing)} (pip install -e '.[cpu]', or "
                              "'.[gpu]' on GPU nodes for onnxruntime-gpu) or set export.enabled: false")
    graph_key = "search.cuda_graph" if plan.searches("cuda_graph") else "train.cuda_graph"
    if device == "cpu" and True in plan.values("cuda_graph"):
        raise ConfigError(f"{graph_key}: true captures the training step as a CUDA graph, but the trials train on "
                          "the CPU (resources.gpus_per_trial: 0); set it to auto (captured only on a GPU) or false")
    for precision in plan.values("precision"):
        problem = device_problem(precision, device)
        if problem and not config.train.allow_slow_precision:
            raise ConfigError(
                f"{where}: {precision!r} on {device}: {problem}. Drop it, run on a device that supports it, "
                "or set train.allow_slow_precision: true to run it anyway")
    return device


def check_timing_fits(config: ExperimentConfig) -> None:
    """Raise ConfigError, before any data is loaded, for a `timing.cpus` or `timing.gpus` this
    machine cannot give one task, when Ray will be embedded here (on a cluster the nodes are known
    only once connected, and orchestrator/timing.py checks them there)."""
    if effective_address(config.ray.address) is not None:
        return
    cpus, gpus = local_cpus(), torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.timing.gpus is not None and config.timing.gpus > gpus:
        raise ConfigError(f"timing.gpus: {config.timing.gpus:g} GPU per timing task, but this machine has {gpus} "
                          "and ray.address is null (embedded local Ray)")
    if config.timing.cpus is not None and config.timing.cpus > cpus:
        raise ConfigError(f"timing.cpus: {config.timing.cpus:g} CPUs per timing task, but this machine has {cpus} "
                          "and ray.address is null (embedded local Ray)")


def describe_plan(config: ExperimentConfig, plan: SearchPlan, notes: list[str] = ()) -> str:
    """What `--dry-run` prints: every trial with its search values and resources."""
    device = preflight(config, plan)
    trials = plan.trials
    res = config.resources
    lines = [*notes,
        f"experiment {config.name!r} -> {config.experiment_uri()}",
        f"{len(trials)} trial(s) x {config.train.epochs} epoch(s) on {device}; each trial: "
        f"{res.cpus_per_trial:g} CPU, {res.gpus_per_trial:g} GPU; scheduler {config.tune.scheduler}, "
        f"metric {config.tune.metric} ({config.tune.mode})",
        f"ray: {effective_address(config.ray.address) or 'embedded local instance'}, "
        f"max_failures {config.ray.max_failures}",
        study_writes(config, plan).describe(),
    ]
    for i, trial in enumerate(trials):
        values = ", ".join(f"{k}={v}" for k, v in trial.items()) or "(no search keys)"
        lines.append(f"  trial {i:3d}: {values}")
    return "\n".join(lines)
