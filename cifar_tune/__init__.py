"""cifar-tune: a Ray Tune precision and deployment study of AlexNet on CIFAR-10.

The Python API (what the `cifar-tune` CLI calls):

    from cifar_tune import load_config, run_experiment, resume_experiment
    config = load_config("configs/smoke.yaml", ["data.root=/data/cifar"])
    outcome = run_experiment(config)      # outcome.table: one row per trial
"""

import os
from typing import Any


def _use_ray_token_auth_if_available() -> None:
    """Ray 2.59+ clusters started with `ray start` require a token, and a client sends none unless
    RAY_AUTH_MODE=token is set when Ray is *imported*. Sending a token to a cluster without auth is
    harmless, so turn it on whenever one is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token). This runs here, first, because any cifar_tune module may import Ray."""
    has_token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                 or os.path.exists(os.path.expanduser("~/.ray/auth_token")))
    if has_token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


_use_ray_token_auth_if_available()

__version__ = "0.1.0"
__all__ = ["load_config", "validate_config", "run_experiment", "resume_experiment", "ConfigError"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import cifar_tune` stays cheap and Ray loads only when needed.
    if name in ("load_config", "validate_config", "ConfigError"):
        from cifar_tune.orchestrator import config

        return getattr(config, name)
    if name in ("run_experiment", "resume_experiment"):
        from cifar_tune.orchestrator import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'cifar_tune' has no attribute {name!r}")
