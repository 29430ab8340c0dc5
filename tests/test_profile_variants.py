"""benchmarks/profile_variants.py cannot rot (`--smoke-test`), and the frozen compiled form really is
frozen: a separate graph with oneDNN's pre-packed convolutions, not the unfrozen graph reused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_tune.precision import is_x86_cpu

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_variants.py"


@pytest.mark.slow  # two torch.compile builds, ~20 s on 2 cores
def test_smoke_profile_groups_ops_and_freezing_prepacks_the_convolutions(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    forms = ["eager_fp32", "compiled", "compiled_frozen", "onnx_fp32"]
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke-test", "--rounds", "1", "--forms", ",".join(forms),
                          "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["wall_ms"]) == {f"{form}@{batch}" for form in forms for batch in (1, 8)}
    assert all(ms > 0 for rounds in result["wall_ms"].values() for ms in rounds)
    profile = result["profile_ms"]
    assert any(op.startswith("ort::Conv") for op in profile["onnx_fp32@8"])  # ONNX Runtime's own profiler
    assert "| compiled_frozen |" in run.stdout and "conv | matmul" in run.stdout
    # Measured on x86 only: on Arm, oneDNN runs through ACL and inductor may not pre-pack at all.
    if torch.backends.mkldnn.is_available() and is_x86_cpu():
        # Frozen: convolutions run on weights packed once at compile time; unfrozen: aten's per-call dispatch.
        assert "mkldnn::_convolution_pointwise" in profile["compiled_frozen@8"]
        assert "aten::mkldnn_convolution" not in profile["compiled_frozen@8"]
        assert "mkldnn::_convolution_pointwise" not in profile["compiled@8"]
