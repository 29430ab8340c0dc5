"""benchmarks/gpu_check.py cannot rot: the same code end to end on this CPU (`--device cpu --quick`),
and the subset file it writes for a GPU box that cannot take the full data set."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from cifar_files import write_cifar
from conftest import FAST_VARIANTS

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_reports_training_checks_and_variants(tmp_path: Path) -> None:
    # All but torch.compile's variants (a minute of compiling here; tests/test_export.py covers them),
    # and tensorrt, asked for to see it listed as not run.
    variants = ",".join([*FAST_VARIANTS, "tensorrt"])
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(tmp_path),
                          "--variants", variants], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "synthetic" in result["data"]
    trained = {row["precision"]: row for row in result["training"]}
    assert "fp32" in trained and trained["fp32"]["images_per_s"] > 0 and trained["fp32"]["achieved_tflops"] > 0
    assert trained["fp32"]["test_acc"] > 0.5  # the synthetic set is learnable; chance is 0.1
    assert all(check["ok"] for check in result["checks"]), result["checks"]
    assert any(c["check"] == "fp32 matmul is strict fp32" for c in result["checks"])
    variants = {row["variant"]: row for row in result["deployment"]}
    assert {"eager_fp32", "torchscript", "onnx_fp32", "onnx_int8"} <= set(variants)
    assert variants["onnx_fp32"]["status"] == "ok" and variants["onnx_fp32"]["p50_ms"]
    not_run = {item["what"] for item in result["not_run"]}
    assert "training in tf32" in not_run  # and says why
    assert "variant tensorrt" in not_run  # a CUDA-only variant asked for on a CPU: skipped, with the reason
    report = (tmp_path / "report.md").read_text()
    assert "## Not run" in report and "TF32 is a CUDA tensor-core mode" in report


def test_subset_file_round_trips(tmp_path: Path) -> None:
    gpu_check = _module()
    write_cifar(tmp_path / "cifar", per_batch=60, n_test=40)
    subset = gpu_check.make_subset(str(tmp_path / "cifar"), tmp_path / "subset.npz", n_train=200, n_test=30)
    assert subset.stat().st_size < gpu_check.SUBSET_LIMIT_BYTES
    args = argparse.Namespace(data=None, subset=str(subset), quick=True, val_size=5000)
    data, source = gpu_check.load_source(args)
    assert "subset" in source and "200 training, 30 test" in source
    assert len(data.train_y) + len(data.val_y) == 200 and len(data.test_y) == 30
