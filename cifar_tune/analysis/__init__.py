"""Analysis: an experiment folder read into tables, seed statistics, the report and the W&B run.

    from cifar_tune.analysis import load_experiment, analyze, analyze_experiment
    exp = load_experiment("results/study")         # trials, history, bench as DataFrames
    analysis = analyze(exp)                          # aggregates, comparisons, conclusions
    analysis, written = analyze_experiment("results/study")   # report.md, plots, CSVs
"""

from importlib import import_module
from typing import Any

# name -> the module that defines it. Imported on first use: a worker that needs one submodule
# (an export task reads analysis.speed through the orchestrator) does not load matplotlib and scipy.
_WHERE = {"Experiment": "load", "ExperimentNotFound": "load", "load_experiment": "load",
          "analyze_experiment": "report", "write_report": "report", "fastest_variants": "stats",
          "inference_speedups": "stats", "Analysis": "summary", "analyze": "summary", "trial_table": "trials"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"cifar_tune.analysis.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cifar_tune.analysis' has no attribute {name!r}")
