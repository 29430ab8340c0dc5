"""W&B offline: trial runs and the analysis run read back without a server; no secret on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cifar_tune import run_experiment
from cifar_tune.analysis.report import analyze_experiment
from cifar_tune.config import validate_config
from cifar_tune.tracking import resolve_mode

from conftest import ALLOW_SECOND, SECOND_PRECISION

FAKE_KEY = "ctfake" + "0123456789abcdef" * 2 + "fedcba98"  # 46 recognizable characters
WANDB = str(Path(sys.executable).parent / "wandb")


def _inspect(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary view, the run record) of an offline run, read by `wandb leet inspect`."""
    summary = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr
    records = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    run = next(json.loads(line)["run"] for line in records.stdout.splitlines() if '"type":"run"' in line)
    return json.loads(summary.stdout), run


@pytest.fixture(scope="module")
def logged(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests: None) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", FAKE_KEY)  # present, but the runs are offline: must never reach a file
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        raw = {
            "name": "tracked", "storage_path": str(tmp_path_factory.mktemp("wandb")),
            "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 128},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.02, **ALLOW_SECOND},
            "search": {"precision": ["fp32", SECOND_PRECISION], "seed": [0]},
            "resources": {"cpus_per_trial": 1}, "export": {"enabled": False},
            "wandb": {"mode": "offline", "tags": ["ci"]},
            "timing": {"enabled": True, "rounds": 2, "steps": 2, "warmup_steps": 1},
        }
        path = run_experiment(validate_config(raw), quiet=True).path
        analyze_experiment(path, wandb_mode="offline")
    return path


def test_trial_runs_are_grouped_tagged_and_summarized(logged: Path) -> None:
    runs = [_inspect(d) for d in sorted((logged / "wandb").glob("offline-run-*"))]
    trials = [(s, r) for s, r in runs if r.get("job_type") == "train"]
    assert len(trials) == 2
    precisions = set()
    for summary, run in trials:
        assert run["run_group"] == "tracked" and run["project"] == "cifar-tune"
        assert "seed:0" in run["tags"] and "ci" in run["tags"]
        precision = next(t.split(":", 1)[1] for t in run["tags"] if t.startswith("precision:"))
        precisions.add(precision)
        assert summary["config"]["train"]["precision"] == precision
        assert {"test_acc", "val_acc", "train_loss", "epoch"} <= set(summary["summary"])
        assert summary["summary"]["epoch"] == 2
    assert precisions == {"fp32", SECOND_PRECISION}


def test_analysis_run_holds_tables_and_headline_numbers(logged: Path) -> None:
    runs = [(_inspect(d), d) for d in sorted((logged / "wandb").glob("offline-run-*"))]
    ((summary, run), run_dir), = [(x, d) for x, d in runs if x[1].get("job_type") == "analysis"]
    assert run["run_group"] == "tracked"
    expected = {f"{SECOND_PRECISION}/test_acc_diff_pp", f"{SECOND_PRECISION}/train_speedup", "fp32/test_acc_mean",
                "fp32/isolated_images_per_s"}
    assert expected <= set(summary["summary"])
    assert summary["summary"]["fp32/isolated_images_per_s"] > 0
    assert summary["summary"]["training_times"].startswith("per-trial training times")  # with the packing said
    assert f"{SECOND_PRECISION} vs fp32" in summary["summary"]["conclusions"]
    files = [p.name for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")]
    for table in ("trials", "aggregate", "comparison", "per_image", "training_speed", "original_study_table"):
        assert any(name.startswith(f"{table}_") for name in files), (table, files)


def test_no_secret_in_any_written_file(logged: Path) -> None:
    checked = 0
    for path in logged.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
            checked += 1
    assert checked > 20  # configs, results, checkpoints, W&B logs, report


def test_auto_mode(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
