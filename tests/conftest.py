"""Shared fixtures: small learnable CIFAR-format data written by the tests, and a tiny config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cifar_files import write_cifar  # noqa: E402


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 training and 100 test images whose class is their (noisy) colour: learnable in a few steps."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, per_batch=100, n_test=100)
    return root


@pytest.fixture
def tiny_raw(cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A raw (unvalidated) config for a seconds-long experiment on the tiny data."""
    return {
        "name": "tiny",
        "storage_path": str(tmp_path / "results"),
        "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 192},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.02, "precision": "amp_bf16", "eval_batch_size": 200},
        "resources": {"cpus_per_trial": 1},
        "export": {"enabled": False},
        "wandb": {"mode": "disabled"},
    }
