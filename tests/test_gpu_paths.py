"""The GPU paths' defects, fixed and checked on a CPU: what can be proven without a GPU is proven
here (benchmarks/gpu_check.py runs the rest on a GPU)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx
import pytest
import ray
import torch

from cifar_tune import bench as bench_mod
from cifar_tune import data as data_mod
from cifar_tune.config import ExportConfig, validate_config
from cifar_tune.data import load_data, normalize
from cifar_tune.export import load_best_model, save_onnx, save_onnx_fp16
from cifar_tune.orchestrator import export_hook
from cifar_tune.plan import SearchPlan
from cifar_tune.trainables.train import Trainer

from conftest import FAST_VARIANTS

QUICK = ExportConfig(batch_sizes=[2], warmup_runs=0, min_runs=2, min_duration_s=0.0, calibration_images=32,
                     end_to_end=False, variants=FAST_VARIANTS)


@pytest.fixture(scope="module")
def checkpoint(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    config = validate_config({"data": {"root": str(cifar_root), "download": False, "val_size": 100,
                                       "train_subset": 64}, "train": {"epochs": 1, "batch_size": 32}})
    data = load_data(config.data)
    trainer = Trainer(config.train, config.model, data)
    trainer.train_epoch()
    folder = tmp_path_factory.mktemp("ckpt")
    trainer.save(folder)
    return folder, data


def test_onnx_fp16_builds_and_passes_the_checker(checkpoint, tmp_path: Path) -> None:
    """convert_float_to_float16(keep_io_types=True) leaves the graph unsorted; the export sorts it."""
    model, _ = load_best_model(checkpoint[0])
    fp16 = save_onnx_fp16(save_onnx(model, tmp_path / "model.onnx"), tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(fp16))
    onnx.checker.check_model(graph, full_check=True)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 in
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 out
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_fp32_rows_are_built_and_timed_with_tf32_off(checkpoint, tmp_path: Path, monkeypatch) -> None:
    seen = []
    real = bench_mod.build_variants

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_mod, "build_variants", spy)
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: what a GPU process starts with
    torch.backends.cuda.matmul.allow_tf32 = True
    folder, data = checkpoint
    bench_mod.bench_checkpoint(folder, tmp_path, data.test_x, data.test_y, data.train_x, QUICK,
                               device=torch.device("cpu"), threads=1)
    assert seen == [(False, False)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # restored


def test_bench_rows_name_the_device_each_variant_ran_on(checkpoint, tmp_path: Path) -> None:
    folder, data = checkpoint
    result = bench_mod.bench_checkpoint(folder, tmp_path, data.test_x, data.test_y, data.train_x, QUICK,
                                        device=torch.device("cpu"), threads=1)
    for row in result["bench"]:
        assert row["device_name"] == bench_mod.device_name(torch.device(row["device"]))


def test_normalize_builds_its_statistics_once_per_device() -> None:
    data_mod._channel_stats.cache_clear()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first = normalize(images)
    normalize(images)
    info = data_mod._channel_stats.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert torch.allclose(first.mean(dim=(0, 2, 3)), ((images.float() / 255).mean(dim=(0, 2, 3))
                                                       - torch.tensor(data_mod.MEAN)) / torch.tensor(data_mod.STD))


@pytest.mark.parametrize("cluster_gpus, trial_share, expected", [(0, 0.0, 0.0), (1, 0.25, 0.25), (2, 0.0, 1.0)])
def test_an_export_asks_for_the_trials_gpu_share(tiny_raw, monkeypatch, cluster_gpus: int, trial_share: float,
                                                  expected: float) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2, "GPU": cluster_gpus})
    config = validate_config({**tiny_raw, "resources": {"gpus_per_trial": trial_share}})
    assert export_hook.export_gpus(config) == expected
    config.export.gpus = 0.5  # an explicit share always wins
    assert export_hook.export_gpus(config) == 0.5


@pytest.mark.usefixtures("ray_for_tests")
def test_queued_exports_each_get_the_timeout_not_one_shared(tiny_raw) -> None:
    @ray.remote(num_cpus=2)  # one at a time on the 2-CPU test Ray: they queue, as on a busy GPU
    def slow(seconds: float) -> dict[str, Any]:
        time.sleep(seconds)
        return {"bench": []}

    config = validate_config({**tiny_raw, "export": {"enabled": True, "timeout_s": 4}})
    hook = export_hook.ExportCallback(config, SearchPlan.of(config))
    hook.pending = {f"t{i}": (slow.remote(1.5), {"trial_id": f"t{i}"}) for i in range(3)}  # 4.5 s in all
    hook.pending["stuck"] = (slow.options(num_cpus=0).remote(600), {"trial_id": "stuck"})  # runs beside them
    hook.collect(config.export.timeout_s)
    assert {k: v["status"] for k, v in hook.outcomes.items()} == {"t0": "ok", "t1": "ok", "t2": "ok",
                                                                    "stuck": "timeout"}
    assert "export.timeout_s=4" in hook.outcomes["stuck"]["reason"]
