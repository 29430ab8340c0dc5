"""benchmarks/gpu_check.py cannot rot: the same code end to end on this CPU (`--device cpu --quick`),
and the subset file it writes for a GPU box that cannot take the full data set."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

from cifar_tune.config import validate_config
from cifar_tune.export import build_variants
from cifar_tune.models import build_model

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
    # torchvision, pandas, Ray, wandb hidden: the check must not need them (a GPU box may lack them)
    run = _hidden("torchvision,pandas,scipy,matplotlib,ray,wandb,pyarrow,boto3", "--device", "cpu", "--quick",
                  "--out", str(tmp_path), "--variants", variants)
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


# A GPU box may have torch, onnx and onnxruntime and nothing else this project uses: the check must
# say so rather than stop at an import. Modules are hidden from a subprocess as Python's import system
# allows: None in sys.modules makes `import` raise ModuleNotFoundError and find_spec answer None.
BLOCKER = """
import runpy, sys
sys.modules.update(dict.fromkeys(sys.argv[1].split(",")))
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""
ONLY_TORCH_ONNX_ORT = "pydantic,yaml,onnxscript,torchvision,pandas,scipy,matplotlib,ray,wandb,pynvml,pyarrow,boto3"


def _hidden(modules: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, modules, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_check_env_says_what_is_missing_where_only_torch_onnx_and_onnxruntime_are(tmp_path: Path) -> None:
    run = _hidden(ONLY_TORCH_ONNX_ORT, "--check-env", "--device", "cpu")
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-2000:]
    assert run.returncode == 1  # something is missing
    lines = {line.split()[3]: line for line in run.stdout.splitlines() if "python package" in line}
    assert lines["pydantic"].startswith("MISSING") and lines["pyyaml"].startswith("MISSING")
    assert lines["onnxscript"].startswith("MISSING") and lines["torch"].startswith("ok")
    assert lines["nvidia-ml-py"].startswith("optional")  # energy readings only: never counted as missing
    variants = {line.split("variant ")[1].split(":")[0]: line for line in run.stdout.splitlines() if "variant " in line}
    assert variants["torchscript"].startswith("ok")  # the variants are still checked, against the registry
    assert variants["onnx_int8"].startswith("MISSING") and "onnxscript" in variants["onnx_int8"]
    # and the check itself stops with the same words, not a traceback from an import
    run = _hidden(ONLY_TORCH_ONNX_ORT, "--device", "cpu", "--quick", "--out", str(tmp_path))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "MISSING" in run.stderr


def test_the_pack_installs_offline_and_runs_the_check_from_the_tree(tmp_path: Path) -> None:
    """--pack without downloads (the box is said to have everything), a hand-made wheel added as pip
    would have downloaded it; run.sh then unpacks it, checks the box and runs the check on the subset."""
    gpu_check = _module()
    write_cifar(tmp_path / "cifar", per_batch=60, n_test=40)
    folder = gpu_check.pack(tmp_path / "gpu-pack", str(tmp_path / "cifar"), "3.12", "2.11",
                            box_has=[pip for pip, _ in gpu_check.PACKAGES.values()], extra=[], n_train=300, n_test=40)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["downloaded"] == [] and manifest["subset"]["train_images"] == 300
    assert set(manifest["files"]) == {"cifar-subset.npz", "run.sh"}
    with zipfile.ZipFile(folder / "wheels" / "probe_pkg-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("probe_pkg/__init__.py", "VALUE = 42\n")
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(folder / "run.sh"), str(out), "--device", "cpu", "--quick", "--epochs", "1",
                          "--variants", "eager_fp32,onnx_fp32"], cwd=SCRIPT.parent.parent, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (folder / "site" / "probe_pkg" / "__init__.py").is_file()  # unpacked without pip or a network
    assert "0 missing" in (out / "check-env.txt").read_text()
    result = json.loads((out / "gpu_check.json").read_text())
    assert "subset" in result["data"] and "300 training, 40 test" in result["data"]
    assert {row["variant"] for row in result["deployment"]} == {"eager_fp32", "onnx_fp32"}
    (folder / "cifar-subset.npz").write_bytes(b"not the subset")  # a pack damaged on its way is refused
    run = subprocess.run(["bash", str(folder / "run.sh"), str(out)], cwd=SCRIPT.parent.parent, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode != 0 and "cifar-subset.npz" in run.stdout + run.stderr


def test_variants_whose_build_no_longer_fits_the_budget_are_dropped_with_the_reason(tmp_path: Path) -> None:
    gpu_check = _module()
    rows = gpu_check.check_env("cpu", ["eager_fp32"])
    assert all(row["ok"] for row in rows if not row["optional"])
    model = build_model(validate_config({}).model).eval()
    variants, failed, skipped = build_variants(model, tmp_path, torch.device("cpu"), torch.randn(8, 3, 32, 32), 1,
                                               wanted=["eager_fp32", "torchscript", "onnx_fp32"],
                                               deadline=time.monotonic() + 10)  # torchscript fits; ONNX's 20 s does not
    assert [v.name for v in variants] == ["eager_fp32", "torchscript"] and not failed
    assert skipped["onnx_fp32"].startswith("time budget: about 20 s")


def test_the_cuda_graph_check_compares_replays_with_eager_steps(monkeypatch) -> None:
    """gpu_check's graph check, run on a CPU with the stand-in capture (tests/test_graphed_step.py): the
    same steps both ways give bit-equal weights, and the rows say so with both speeds."""
    from test_graphed_step import FakeCapture

    from cifar_tune import train as train_mod

    class CpuGraphTrainer(train_mod.Trainer):
        def __init__(self, config, model, data, device):
            super().__init__(config, model, data, device, capture=FakeCapture() if config.cuda_graph is True else None)

    monkeypatch.setattr(train_mod, "Trainer", CpuGraphTrainer)
    monkeypatch.setattr(train_mod, "fused_optimizer", lambda device, graphed=False: True)  # as on CUDA, both ways
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    gpu_check = _module()
    data = gpu_check.as_cifar_data(*gpu_check.synthetic(160, 32), val_size=32)
    checks, speeds = gpu_check.check_cuda_graph(data, torch.device("cpu"), ["fp32"], batch_size=32, steps=2)
    assert [c["ok"] for c in checks] == [True] and "bit-equal weights True" in checks[0]["detail"]
    assert speeds[0]["precision"] == "fp32" and speeds[0]["eager_images_per_s"] > 0


def test_an_aoti_package_that_will_not_load_is_diagnosed_step_by_step(monkeypatch, tmp_path: Path) -> None:
    """On the H200 a CUDA model.pt2 killed the process loading it; the check then runs each loading step
    in a child of its own and says how each ended (a crash, an error, a hang), and what the package
    holds and links against, so the next GPU run tells a broken package from a broken loader."""
    steps = {"crashes": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
             "fails": "import sys\nsys.exit('no such runner: ' + sys.argv[2])\n",
             "hangs": "import time\ntime.sleep(30)\n",
             "works": "import sys\nprint('loaded', sys.argv[1].endswith('model.pt2'))\n"}
    gpu_check = _module()
    monkeypatch.setattr(gpu_check, "AOTI_STEPS", steps)
    package = tmp_path / "model.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("model/data/aotinductor/model/wrapper.so", b"not an ELF file")
        archive.writestr("model/archive_format", "pt2")
    rows = {row["step"]: row for row in gpu_check.diagnose_aoti(package, torch.device("cpu"), timeout_s=5)}
    assert rows["crashes"]["status"] == "killed by SIGSEGV" and "Segmentation fault" in rows["crashes"]["output"]
    assert rows["fails"]["status"] == "exit 1" and "no such runner: cpu" in rows["fails"]["output"]
    assert rows["hangs"]["status"].startswith("no answer in 5 s")
    assert rows["works"] == {"step": "works", "status": "ok", "output": "loaded True"}
    assert rows["the package's files"]["status"] == "2 files" and "wrapper.so 15" in rows["the package's files"]["output"]
    assert "not a dynamic executable" in rows["ldd model/data/aotinductor/model/wrapper.so"]["output"]
