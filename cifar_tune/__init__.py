"""cifar-tune: a Ray Tune precision and deployment study of AlexNet on CIFAR-10.

The Python API (what the `cifar-tune` CLI calls):

    from cifar_tune import extend_experiment, load_config, run_experiment, resume_experiment
    config = load_config("configs/smoke.yaml", ["data.root=/data/cifar"])
    outcome = run_experiment(config)      # outcome.table: one row per trial
    extend_experiment(outcome.location.uri, seeds=3)   # more seeds, later

    from cifar_tune.analysis import load_experiment, analyze_experiment

Importing any cifar_tune module changes nothing in the process: no environment variable, no Ray
setting, no torch flag (tests/test_layers.py checks it).
"""

from typing import Any

__version__ = "0.2.0"
__all__ = ["load_config", "validate_config", "run_experiment", "resume_experiment", "extend_experiment",
           "ConfigError", "CifarTuneError"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import cifar_tune` stays cheap and Ray loads only when needed.
    if name in ("load_config", "validate_config", "ConfigError"):
        from cifar_tune import config

        return getattr(config, name)
    if name == "CifarTuneError":
        from cifar_tune.errors import CifarTuneError

        return CifarTuneError
    if name in ("run_experiment", "resume_experiment"):
        from cifar_tune.orchestrator import experiment

        return getattr(experiment, name)
    if name == "extend_experiment":
        from cifar_tune.orchestrator.extend import extend_experiment

        return extend_experiment
    raise AttributeError(f"module 'cifar_tune' has no attribute {name!r}")
