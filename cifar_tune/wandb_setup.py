"""Weights & Biases set-up, without Ray: which mode to run in and where its files go.

No API key is ever passed as an argument or written anywhere by cifar-tune: W&B reads it from
WANDB_API_KEY or ~/.netrc itself.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from cifar_tune.storage import Location

WANDB_HOST = "api.wandb.ai"


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """'auto' -> 'online' with credentials, else 'offline'; other modes as given."""
    if mode != "auto":
        return mode
    return "online" if has_credentials() else "offline"


def wandb_dir(experiment: Location) -> Path:
    """Where W&B writes (it adds its own wandb/ folder): $WANDB_DIR if set, else the experiment
    folder on local storage, else ~/.cache/cifar-tune/<name> on this machine: W&B keeps its run
    files on local disk, also when the experiment's storage is a bucket."""
    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"])
    if experiment.is_local:
        return experiment.local_path
    return Path.home() / ".cache" / "cifar-tune" / experiment.name


def offline_note(folder: Path) -> str:
    return (f"W&B: no credentials found, logging offline under {folder / 'wandb'}; "
            f"upload later with `wandb sync {folder / 'wandb'}/offline-run-*`")


def apply_wandb_mode(config: Any) -> str:
    """Resolve `wandb.mode` for a run or a resume and tell W&B (and Ray's callback, which
    otherwise insists on an API key) through WANDB_MODE when it is offline. Returns the mode.
    A resume needs this too: Tune restores the experiment's W&B callback from its own state."""
    mode = resolve_mode(config.wandb.mode)
    if mode == "offline":
        os.environ["WANDB_MODE"] = mode
    return mode
