"""Analysis: an experiment folder read into tables, seed statistics, the report and the W&B run.

    from cifar_tune.analysis import load_experiment, analyze, analyze_experiment
    exp = load_experiment("results/study")         # trials, history, bench as DataFrames
    analysis = analyze(exp)                          # aggregates, comparisons, conclusions
    analysis, written = analyze_experiment("results/study")   # report.md, plots, CSVs
"""

from cifar_tune.analysis.load import Experiment, ExperimentNotFound, load_experiment
from cifar_tune.analysis.report import analyze_experiment, write_report
from cifar_tune.analysis.stats import fastest_variants, inference_speedups
from cifar_tune.analysis.summary import Analysis, analyze
from cifar_tune.analysis.trials import trial_table

__all__ = ["Analysis", "Experiment", "ExperimentNotFound", "analyze", "analyze_experiment", "fastest_variants",
           "inference_speedups", "load_experiment", "trial_table", "write_report"]
