"""Isolated timing: training speed per precision with the device to itself.

Per-trial training times are measured while other trials share the device (four trials on one
GPU in configs/study.yaml), so they cannot back a speed claim. `cifar-tune time CONFIG` (or
`timing.enabled: true`, after the trials of a run) measures instead: a Ray task per precision that
holds a whole GPU, or every CPU of a node, trains `timing.steps` steps after `timing.warmup_steps`
untimed ones, and reports images/s; `timing.rounds` rounds, each timing every precision once in an
order rotated per round, so slow drift of the machine (clocks, heat, neighbours) falls on every
precision alike. All tasks run on one node, one at a time, each in a fresh worker process.

Every timed block is appended to <experiment>/timing_rounds.csv; timing.csv holds the summary of
the newest session (cifar_tune.analysis.speed), which the report's speed claims use.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cifar_tune.analysis.speed import SESSION, timing_summary
from cifar_tune.config import ConfigError, ExperimentConfig
from cifar_tune.data import CifarData, load_data
from cifar_tune.names import TIMING_CSV, TIMING_ROUNDS_CSV
from cifar_tune.orchestrator.cluster import isolated_node, ray_session
from cifar_tune.orchestrator.preflight import check_timing_fits, preflight
from cifar_tune.search import SearchPlan, plan_experiment
from cifar_tune.storage import Location
from cifar_tune.trainables.timed_block import time_block


@dataclass
class TimingOutcome:
    location: Location  # the experiment folder timing.csv and timing_rounds.csv went to
    rounds: pd.DataFrame  # this session's timed blocks
    summary: pd.DataFrame  # per precision (timing.csv)


def timing_resources(config: ExperimentConfig, nodes: list[dict[str, Any]]) -> tuple[str, float, float]:
    """(node id, CPUs, GPUs) for every timing task: a whole GPU when the trials use GPUs (else
    `timing.gpus`), and every CPU of the node when no GPU is used (else `timing.cpus`, by default
    the trials' own CPU share), on `isolated_node`."""
    gpus = config.timing.gpus if config.timing.gpus is not None else (1.0 if config.resources.gpus_per_trial > 0 else 0.0)
    node = isolated_node(nodes, gpus, "timing.gpus")
    if config.timing.cpus is not None:
        cpus = config.timing.cpus
    elif gpus > 0:
        cpus = config.resources.cpus_per_trial
    else:
        cpus = node["Resources"].get("CPU", 1)
    if cpus > node["Resources"].get("CPU", 0):
        raise ConfigError(f"timing.cpus: {cpus:g} CPUs per timing task, but the chosen node has "
                          f"{node['Resources'].get('CPU', 0):g}")
    return node["NodeID"], cpus, gpus


def round_order(precisions: list[str], round_index: int) -> list[str]:
    """Round r starts at the r-th precision: each one goes first, second, ... equally often."""
    shift = round_index % len(precisions)
    return precisions[shift:] + precisions[:shift]


def measure(config: ExperimentConfig, data: CifarData, precisions: list[str], quiet: bool = False) -> pd.DataFrame:
    """Every timed block of one session, in a connected Ray session; one row per block."""
    node_id, cpus, gpus = timing_resources(config, ray.nodes())
    timing = config.timing
    task = time_block.options(num_cpus=cpus, num_gpus=gpus,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    data_ref = ray.put(data)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for round_index in range(timing.rounds):
        for position, precision in enumerate(round_order(precisions, round_index)):
            train = {**config.train.model_dump(), "precision": precision}
            result = ray.get(task.remote(train, config.model.model_dump(), data_ref, timing.steps,
                                         timing.warmup_steps, gpus))
            rows.append({SESSION: started, "round": round_index, "position": position, "precision": precision,
                         **result, "cpus": cpus, "gpus": gpus})
            if not quiet:
                print(f"timing round {round_index + 1}/{timing.rounds}: {precision:<9} "
                      f"{result['images_per_s']:8.1f} img/s on {result['device']}")
    return pd.DataFrame(rows)


def record(location: Location, rounds: pd.DataFrame, baseline: str = "fp32") -> pd.DataFrame:
    """Append a session to timing_rounds.csv (earlier sessions stay) and write its summary as timing.csv."""
    earlier = location.read_csv(TIMING_ROUNDS_CSV)
    location.write_csv(TIMING_ROUNDS_CSV, pd.concat([earlier, rounds], ignore_index=True))
    summary = timing_summary(rounds, baseline)
    location.write_csv(TIMING_CSV, summary)
    return summary


def precisions_to_time(config: ExperimentConfig) -> list[str]:
    """The precisions of the experiment (its search, else train.precision), in the config's order."""
    return [str(p) for p in SearchPlan.of(config).values("precision")] or [config.train.precision]


def time_in_session(config: ExperimentConfig, data: CifarData, location: Location | None = None,
                    quiet: bool = False) -> TimingOutcome:
    """Measure and record into `location` (default: the config's experiment folder), in an already
    connected Ray session (after the trials of a run)."""
    rounds = measure(config, data, precisions_to_time(config), quiet)
    location = location or config.experiment_location()
    summary = record(location, rounds)
    if not quiet:
        print(format_summary(summary, location))
    return TimingOutcome(location, rounds, summary)


def time_experiment(config: ExperimentConfig, location: Location | None = None, quiet: bool = False) -> TimingOutcome:
    """The Python API behind `cifar-tune time`: validate, load the data, connect to Ray (embedded or
    `ray.address`), measure and record into `location` (default <storage_path>/<name>/; an
    experiment that has not run yet may be timed first: `cifar-tune run` accepts a folder that holds
    only timing files)."""
    config, plan, notes = plan_experiment(config)
    for line in [] if quiet else notes:
        print(line)
    preflight(config, plan)
    check_timing_fits(config)  # preflight checks it only where timing.enabled asks for timing after a run
    data = load_data(config.data)
    with ray_session(config.ray.address):
        return time_in_session(config, data, location, quiet)


def format_summary(summary: pd.DataFrame, location: Location) -> str:
    lines = [f"\nIsolated training speed ({location / TIMING_CSV}): median img/s over rounds, speedup over "
             "fp32 paired by round, 95% intervals"]
    for _, row in summary.iterrows():
        median = f"{row['median_images_per_s']:.1f} img/s"
        if pd.notna(row["ci_low"]):
            median += f" ({row['ci_low']:.1f}-{row['ci_high']:.1f})"
        speed = "" if pd.isna(row["speedup"]) else f", speedup {row['speedup']:.2f}x"
        if pd.notna(row["speedup_ci_low"]) and row["precision"] != row["baseline"]:
            speed += f" ({row['speedup_ci_low']:.2f}-{row['speedup_ci_high']:.2f})"
        lines.append(f"  {row['precision']:<9} {median}{speed}, {row['rounds']} rounds on {row['device']}")
    return "\n".join(lines)
