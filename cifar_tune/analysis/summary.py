"""What an experiment shows: every table of the report, the sentences, and what is missing.

    analysis = analyze(load_experiment("results/study"))
    analysis.comparison     each precision against fp32, paired by seed (compare.py)
    analysis.conclusions    one sentence per comparison

The report (report.py) and the W&B analysis run (wandb_report.py) both render this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cifar_tune.analysis.compare import compare_to_baseline, conclusion, image_conclusion, per_image
from cifar_tune.analysis.load import Experiment
from cifar_tune.analysis.speed import packing, packing_label, packing_note, with_speed_source
from cifar_tune.analysis.stats import aggregate, complete_trials, inference_speedups, original_study_table

WHERE_PRECISIONS_RUN = (
    "A comparison needs a second precision the hardware runs well: on an x86 CPU, amp_bf16 with AVX512-BF16 or AMX "
    "(e.g. Intel Sapphire Rapids, AMD Zen 4 or newer; on other CPUs cifar-tune has not measured it); "
    "on a CUDA GPU, amp_fp16 on any, tf32 and amp_bf16 from "
    "compute capability 8.0 (Ampere) on. `search.precision: auto` picks them where they run.")


@dataclass
class Analysis:
    """Every table of the report, as DataFrames, plus the sentences and what is missing."""

    experiment: Experiment
    aggregate: pd.DataFrame
    comparison: pd.DataFrame
    original: pd.DataFrame
    inference: pd.DataFrame
    conclusions: list[str]
    missing: list[str] = field(default_factory=list)
    margin_pp: float = 0.5  # the equivalence margin the verdicts used
    per_image: pd.DataFrame = field(default_factory=pd.DataFrame)  # McNemar per seed pair, and pooled
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)  # isolated training speed (timing.csv)
    training_times: str = ""  # how the per-trial training times were measured (packing)


def analyze(experiment: Experiment, baseline: str = "fp32", margin_pp: float | None = None) -> Analysis:
    """`margin_pp` None: the experiment's `analysis.margin_pp`."""
    margin = experiment.config.analysis.margin_pp if margin_pp is None else margin_pp
    trials, groups = experiment.trials, experiment.group_columns
    missing = []
    if trials.empty:
        missing.append("the experiment has no trials yet")
    done = complete_trials(trials)
    not_done = trials.drop(done.index)
    for _, row in not_done.iterrows():
        why = f": {row['error']}" if row["error"] else ""
        missing.append(f"trial {row['trial_id']} ({row['precision']}, seed {row['seed']}) is {row['status']} after "
                       f"{row['epochs_done']} epoch(s){why}; left out of the statistics")
    agg = aggregate(trials, groups) if not done.empty else pd.DataFrame()
    comparison = (with_speed_source(compare_to_baseline(trials, groups, baseline, margin, experiment.predictions),
                                    done, experiment.timing) if not done.empty else pd.DataFrame())
    images = per_image(trials, groups, experiment.predictions, baseline) if not done.empty else pd.DataFrame()
    precisions = sorted(set(done["precision"])) if not done.empty else []
    if len(precisions) == 1:
        devices = ", ".join(sorted(set(done["device"].dropna().astype(str)) - {""})) or "an unrecorded device"
        missing.append(f"only {precisions[0]} ran (on {devices}): nothing to compare. {WHERE_PRECISIONS_RUN}")
    elif precisions and baseline not in precisions:
        missing.append(f"no finished {baseline} trial: nothing to compare the other precisions with")
    others = [g for g in groups if g != "precision"]
    conclusions = [conclusion(row, others) for _, row in comparison.iterrows()]
    if not images.empty:
        for _, row in images[images["seed"] == "all"].iterrows():
            pairs = int(((images["seed"] != "all") & (images["precision"] == row["precision"])).sum())
            conclusions.append(image_conclusion(row, baseline, pairs))
    elif len(precisions) > 1:
        missing.append("no per-image test predictions in the trials' checkpoints (saved since cifar-tune 0.2): "
                       "no McNemar test")
    packed = packing(done)  # the most trials that shared a device: how per-trial times were measured
    if len(precisions) > 1 and experiment.timing.empty:
        missing.append("no isolated timing (timing.csv): training speedups below come from per-trial times, "
                       f"{packing_note(packed)}; "
                       f"measure them with `cifar-tune time {experiment.path}`")
    if not done.empty and done["images_per_j"].isna().all():
        reasons = sorted({str(r).removeprefix("none: ") for r in done["energy_source"] if str(r).startswith("none")})
        missing.append("no energy readings for training: " + ("; ".join(reasons) or "not recorded by this version"))
    unfinished = [e for e in experiment.exports.values() if e.get("status") != "ok"]
    exports_note = "; ".join(f"{e.get('precision')} seed {e.get('seed')}: {e.get('status')} ({e.get('reason')})"
                             for e in unfinished)
    if experiment.bench.empty:
        missing.append("no export results (bench.csv): " + (exports_note or "export.enabled was off"))
    elif unfinished:
        missing.append(f"{len(unfinished)} trial(s) without export results: {exports_note}")
    if note := int8_mix(experiment.bench):
        missing.append(note)
    if "latency_method" in experiment.bench:
        untimed = [str(m) for m in experiment.bench["latency_method"].dropna().unique() if str(m).startswith("not measured")]
        if untimed and experiment.bench["p50_ms"].isna().all():
            missing.append(f"no inference latency: {untimed[-1]}")
    return Analysis(experiment, agg, comparison, original_study_table(trials) if not done.empty else pd.DataFrame(),
                    inference_speedups(experiment.bench), conclusions, missing, margin, images, experiment.timing,
                    packing_label(packed))


def int8_mix(bench: pd.DataFrame) -> str | None:
    """What to say when onnx_int8's rows were built with both weight ranges (7-bit where the building
    CPU lacks VNNI, 8-bit elsewhere: an experiment resumed or extended on the other kind of CPU):
    their accuracy and latency are then two models', not one."""
    if bench.empty or "int8_weight_bits" not in bench:
        return None
    bits = bench.loc[bench["variant"] == "onnx_int8", "int8_weight_bits"].dropna().astype(int)
    if bits.nunique() < 2:
        return None
    counts = ", ".join(f"{b}-bit: {n} row(s)" for b, n in sorted(bits.value_counts().items()))
    return (f"one onnx_int8 model's figures: its rows mix 7- and 8-bit weights ({counts}; int8_weight_bits in "
            "bench.csv), exports built on CPUs with and without VNNI, so its row in the tables averages two models")
