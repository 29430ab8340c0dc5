"""The benchmark scripts cannot rot: each runs end to end on the tiny generated data (or its own
`--smoke-test` data) and prints its side-by-side table. Timings are not checked here: the numbers
live in benchmarks/RESULTS.md. (gpu_check.py and profile_variants.py have tests of their own;
profile_training.py compiles a training step per precision, 20-60 s each on 2 cores, and is left out.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cifar_tune.config import validate_config
from cifar_tune.data import load_data
from cifar_tune.train import Trainer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_throughput_compares_every_training_variant() -> None:
    # --smoke-test: a narrow model and a small matmul, so an AVX2-only CPU (bf16 emulated, ~20x slower) takes
    # seconds too; with the study's width it ran past 300 s there
    out = _run("train_throughput.py", "--smoke-test")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert len(rows) == 4, out  # the reference and cifar-tune's fp32, channels_last, amp_bf16
    assert "target: amp_bf16 + channels_last >= 2.0x the reference" in out


def test_inference_compares_variants_on_a_trained_checkpoint(cifar_root: Path, tmp_path: Path) -> None:
    config = validate_config({"data": {"root": str(cifar_root), "download": False, "val_size": 100,
                                       "train_subset": 192},
                              "train": {"epochs": 1, "batch_size": 32, "precision": "fp32"}})
    trainer = Trainer(config.train, config.model, load_data(config.data))
    trainer.train_epoch()
    (tmp_path / "checkpoint_000000").mkdir()
    trainer.save(tmp_path / "checkpoint_000000")
    out = _run("inference.py", str(tmp_path / "checkpoint_000000"), "--data", str(cifar_root), "--rounds", "1",
               "--batch-sizes", "1,4", "--min-duration", "0", "--variants", "eager_fp32,onnx_fp32", "--threads", "1")
    assert "| eager_fp32 | " in out and "| onnx_fp32 | " in out
    assert "target at batch 1: best parity-ok variant" in out and "target at batch 4" in out


@pytest.mark.slow
def test_tune_overhead_smoke_test() -> None:
    """Starts its own embedded Ray in the child process."""
    out = _run("tune_overhead.py", "--smoke-test")
    assert "| Tune trial (time_total_s) |" in out and "target: Tune trial at most 5% over bare" in out


@pytest.mark.slow
def test_storage_cost_smoke_test() -> None:
    """Starts moto's S3 server and an embedded Ray in the child process."""
    out = _run("storage_cost.py", "--smoke-test", timeout=600)
    assert "| local | " in out and "| s3 | " in out and "checkpoint folders for 2 trials" in out


@pytest.mark.slow
def test_study_wall_smoke_test() -> None:
    """Runs the same tiny experiment with exports off and on, each with its own embedded Ray."""
    out = _run("study_wall.py", "--smoke-test", timeout=600)
    assert "| exports off |" in out and "| exports on |" in out and "target: exports on at most 1.5x" in out


@pytest.mark.slow
def test_scale_smoke_test() -> None:
    """A `ray start` node, then bare Tune whose trials also do the post-trial work (the bare trainable
    plus the export and W&B run; plain bare Tune is the same trainable without them) and cifar-tune's
    whole run on it, each in a child process."""
    out = _run("scale.py", "--smoke-test", "--sides", "bare-work,cifar-tune", timeout=600)
    assert out.count("% over the minimum;") == 2 and out.count("2/2 trials done") == 2 and "2 exports" in out
    assert "one export alone " in out and out.count("% over the minimum with exports") == 2  # both sides export
    assert "bare-work: 2 trials exported with every variant within parity" in out
    assert out.count("left by the run: none") == 2, out  # no trial's actor, W&B queue or ledger outlives the run
    assert "results.csv " in out and "analyze " in out
    assert "cifar-tune over bare Tune with the work in its trials: " in out
    # where each side's CPU went, by what its processes were doing, and when each kind was last busy
    assert out.count("CPU by kind (") == 2 and out.count("trial actors ") >= 2 and out.count("last busy: ") == 2, out


def test_scale_census_names_each_process_by_what_it_runs(monkeypatch) -> None:
    """Ray workers by their title; wandb-core (titled by its path) with the W&B logger whose child it is."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from scale import process_kind

    assert process_kind("ray::ImplicitFunc.train") == "trial actors"
    assert process_kind("ray::export_trial") == "exports" and process_kind("ray::IDLE") == "workers between tasks"
    assert process_kind("/venv/lib/python3.11/site-packages/wandb/bin/wandb-core --port-filename f") == "W&B logger"
    assert process_kind("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node") == "Ray's daemons"


@pytest.mark.slow
def test_tune_snapshots_smoke_test() -> None:
    """Starts its own embedded Ray in the child process; both settings' trials all finish."""
    out = _run("tune_snapshots.py", "--smoke-test")
    rows = [line for line in out.splitlines() if line.startswith("| num_to_keep=")]
    assert len(rows) == 2 and all(line.endswith("| 0 |") for line in rows), out
    assert "driver CPU with forced snapshots: " in out


def test_export_cost_smoke_test() -> None:
    """Two checkpoints exported one after the other, each variant's build and parity seconds."""
    out = _run("export_cost.py", "--smoke-test")
    assert out.count("| **sum** |") == 2 and "trial 2 (later: reuses the first one compiled)" in out
    assert "| onnx_int8 |" in out and "| ok |" in out and "failed:" not in out
