"""Runs wherever its users are: a CPU without native bf16 (simulated here, whatever this machine
is), and a box with torch and onnxruntime but no Ray, W&B, scipy or matplotlib."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cifar_tune.orchestrator.cli import main

from conftest import FAST_VARIANTS


def _without_native_bf16(monkeypatch) -> None:
    """An AVX2-only x86 CPU, as torch's capability queries would describe it."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for query in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, query, lambda: False)


@pytest.mark.usefixtures("ray_for_tests")
def test_smoke_run_on_a_cpu_without_native_bf16(tiny_raw, tmp_path: Path, monkeypatch, capsys) -> None:
    _without_native_bf16(monkeypatch)
    smoke = yaml.safe_load((Path(__file__).parent.parent / "configs" / "smoke.yaml").read_text())
    assert smoke["search"]["precision"] == "auto"  # the README's main job runs on any CPU
    raw = {**tiny_raw, "search": {"precision": "auto", "seed": [0]},
           "train": {**tiny_raw["train"], "precision": "fp32", "epochs": 2}}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "search.precision: auto on cpu: running fp32" in out and "left out amp_bf16" in out
    experiment = Path(raw["storage_path"]) / raw["name"]
    table = pd.read_csv(experiment / "results.csv")
    assert list(table["precision"]) == ["fp32"] and list(table["status"]) == ["TERMINATED"]
    assert yaml.safe_load((experiment / "cifar_tune_config.yaml").read_text())["search"]["precision"] == ["fp32"]
    assert main(["analyze", str(experiment), "--wandb-mode", "disabled"]) == 0
    report = (experiment / "analysis" / "report.md").read_text()
    assert "only fp32 ran (on cpu): nothing to compare" in report and "amp_bf16 with AVX512-BF16" in report


CORE = textwrap.dedent("""
    import sys
    for name in ("ray", "wandb", "scipy", "matplotlib"):
        sys.modules[name] = None  # `import ray` now raises ImportError, as on a box without it
    import torch
    sys.path.insert(0, {tests!r})
    from cifar_files import write_cifar
    from cifar_tune.bench import bench_checkpoint
    from cifar_tune.config import DataConfig, ExportConfig, ModelConfig, TrainConfig
    from cifar_tune.data import load_data
    from cifar_tune.train import Trainer

    write_cifar({root!r}, per_batch=40, n_test=50)
    data = load_data(DataConfig(root={root!r}, download=False, val_size=50))
    trainer = Trainer(TrainConfig(epochs=1, batch_size=32, precision="fp32"), ModelConfig(), data)
    metrics = trainer.train_epoch()
    trainer.save({ckpt!r})
    quick = ExportConfig(batch_sizes=[2], warmup_runs=0, min_runs=2, min_duration_s=0, calibration_images=32,
                         end_to_end=False, variants={variants!r})
    result = bench_checkpoint({ckpt!r}, {out!r}, data.test_x, data.test_y, data.train_x, quick,
                              device=torch.device("cpu"), threads=1)
    blocked = [m for m in ("ray", "wandb", "scipy", "matplotlib") if sys.modules.get(m) is not None]
    print("CORE", metrics["epoch"], sorted(r["variant"] for r in result["parity"]), blocked)
""")


def test_core_runs_without_ray_wandb_scipy_or_matplotlib(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    script = CORE.format(tests=str(Path(__file__).parent), root=str(tmp_path / "data"), ckpt=str(tmp_path / "ckpt"),
                         out=str(tmp_path / "export"), variants=FAST_VARIANTS)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("CORE"))
    assert line.startswith("CORE 1 [") and "'onnx_int8'" in line and line.endswith("[]")


def test_the_cli_starts_a_run_without_loading_the_analysis_libraries() -> None:
    """scipy and matplotlib cost a second of every `cifar-tune run`'s start-up (and of each CLI the
    suite starts); they load when an analysis, a dashboard or a deployment summary needs them."""
    script = ("import sys; import cifar_tune.orchestrator.cli, cifar_tune.orchestrator.experiment; "
              "print(sorted(m for m in ('scipy', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
