"""One command that proves every GPU path, without Ray: training in each precision, that each
precision does what it says, and every deployment variant with parity and latency.

The first GPU run succeeds in one call. Where the registries are reachable, pack what the GPU box
lacks (wheels for its Python, a CIFAR-10 subset, a manifest, run.sh; at most 60 MB):

    python benchmarks/gpu_check.py --pack gpu-pack --data ../shared/data --python-version 3.12 --torch-version 2.11

then on the box, from the project's tree (no network needed):

    bash gpu-pack/run.sh OUT                    # installs the wheels into gpu-pack/site, checks, runs
    python benchmarks/gpu_check.py --check-env  # alone: what this box lacks for each part, in seconds

Also: `--device cpu --quick` runs the same code on a CPU in a minute (CI; pass it through run.sh to
rehearse the box's recipe). Without --data or --subset it trains on learnable synthetic images.

Needs: torch and numpy; pydantic and pyyaml (cifar_tune's config); onnx, onnxscript and onnxruntime
for the ONNX variants. Never torchvision, pandas, Ray or wandb. `--check-env` itself runs wherever
Python does, and says what is missing for each part instead of a traceback.

What it does, in order, within `--budget-s` (default 420 s; on one H200, measured 2026-12-04: 108 s
with AOTInductor failing at export, 204 s with it built, ~60 s of which AOTInductor's compile; RESULTS.md):
1. matmul TFLOP/s per precision on the device (the yardstick for training throughput);
2. checks: TF32 off under fp32 and on under tf32 (a matmul against float64), autocast dtypes as
   named, the GradScaler active under amp_fp16 with a fused optimizer (no host sync per step), and
   per precision the training step captured as a CUDA graph against eager steps (bit-equal weights
   under deterministic kernels, and both speeds);
3. trains every precision the device runs well with the Trainer, one precision at a time with the
   device to itself, epochs interleaved; img/s, achieved TFLOP/s against the yardstick, test accuracy;
4. exports the fp32-trained weights through every variant of cifar_tune.variants that this box can
   build, dropping (never crashing on) those whose estimated build no longer fits the budget:
   parity against eager fp32 and p50/p90/p99 latency. Where ONNX Runtime has no CUDA provider that
   loads (the CPU-only onnxruntime package), the ONNX rows are measured on its CPU provider and
   labelled so (or skipped with --skip-cpu-onnx); a CPU measurement is never labelled GPU;
5. writes report.md and gpu_check.json to --out, listing what could not run and why.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

try:  # the check itself needs them; --check-env and --pack run without them, and say so
    import numpy as np
    import torch
except ImportError:
    np = torch = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a copied tree, uninstalled

SUBSET_LIMIT_BYTES = 50 * 2**20
PACK_LIMIT_BYTES = 60 * 2**20
# module -> (pip name, what needs it). Every part's packages; --check-env imports each to see.
PACKAGES = {
    "torch": ("torch", "everything"),
    "numpy": ("numpy", "everything"),
    "pydantic": ("pydantic", "training and export (cifar_tune's config)"),
    "yaml": ("pyyaml", "training and export (cifar_tune's config)"),
    "onnx": ("onnx", "the ONNX variants"),
    "onnxscript": ("onnxscript", "the ONNX variants (torch.onnx's dynamo exporter)"),
    "onnxruntime": ("onnxruntime", "the ONNX variants"),
}
OPTIONAL = {"pynvml": ("nvidia-ml-py", "GPU energy, driver and clocks in the provenance")}
# What the project's GPU box has (the device tool's image); --pack downloads the rest.
BOX_HAS = ("torch", "numpy", "pyyaml", "onnx", "onnxscript", "onnxruntime", "nvidia-ml-py")
MATMUL_DTYPES = {"fp32": "float32", "tf32": "float32", "amp_fp16": "float16", "amp_bf16": "bfloat16"}


# --------------------------------------------------------------------------- what this box lacks


def _imports(module: str) -> str | None:
    """None where `module` imports here, else why not (the error's first line)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return None


def check_env(device: str | None = None, variants: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per requirement of each part: {"part", "need", "ok", "detail"}. Imports packages to see
    them (a package present but broken counts as missing); probes compilers, the CUDA toolkit and
    ONNX Runtime's providers through cifar_tune.machine, by building a session, not by listing."""
    rows, missing = [], {}
    for module, (pip_name, part) in {**PACKAGES, **OPTIONAL}.items():
        problem = missing[module] = _imports(module)
        rows.append({"part": part, "need": f"python package {pip_name}", "ok": problem is None,
                     "optional": module in OPTIONAL, "detail": problem or "imports"})
    if torch is None:
        rows.append({"part": "everything", "need": "a device", "ok": False, "optional": False,
                     "detail": "torch is missing: nothing else can be checked"})
        return rows
    from cifar_tune.machine import device_name, unmet
    from cifar_tune.variants import DEVICE_NEEDS, SPECS

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        rows.append({"part": "everything", "need": "a CUDA GPU visible to torch", "ok": False, "optional": False,
                     "detail": f"torch {torch.__version__} sees none (CUDA build: {torch.version.cuda})"})
        return rows
    rows.append({"part": "everything", "need": f"device {device}", "ok": True, "optional": False,
                 "detail": device_name(device)})
    onnx_missing = [PACKAGES[m][0] for m in ("onnx", "onnxscript", "onnxruntime") if missing[m] is not None]
    for name in variants or default_variants():
        problems = unmet(SPECS[name], device)
        if not problems and SPECS[name].runtime == "ONNX Runtime" and onnx_missing:
            problems = [("packages", f"needs the python package(s) {', '.join(onnx_missing)}")]
        # A fact of the device (a CUDA-only variant on a CPU) is nothing to install: listed, not counted.
        device_fact = bool(problems) and problems[0][0] in DEVICE_NEEDS
        needs = [*SPECS[name].needs, *(["onnx packages"] if SPECS[name].runtime == "ONNX Runtime" else [])]
        rows.append({"part": f"variant {name}", "need": ", ".join(needs) or "nothing",
                     "ok": not problems or device_fact, "optional": False, "not_for_device": device_fact,
                     "detail": problems[0][1] if problems else "met"})
    return rows


def env_report(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["need"]) for r in rows)
    status = lambda r: ("n/a" if r.get("not_for_device") else "ok" if r["ok"]  # noqa: E731
                        else "optional" if r["optional"] else "MISSING")
    lines = [f"{status(r):8} {r['need']:{width}}  "
             f"{r['part']}: {r['detail']}" for r in rows]
    missing = [r for r in rows if not r["ok"] and not r["optional"]]
    lines.append(f"{len(missing)} missing" + (": the parts above marked MISSING will be skipped, with the reason"
                                               if missing else ""))
    return "\n".join(lines)


def default_variants() -> list[str]:
    from cifar_tune.variants import REGISTRY

    return [spec.name for spec in REGISTRY if spec.in_gpu_check]


# --------------------------------------------------------------------------- the pack for a box


RUN_SH = """#!/usr/bin/env bash
# Made by `python benchmarks/gpu_check.py --pack` on {date} for Python {python} and torch {torch}.
# On the GPU box, from the project's tree:   bash {name}/run.sh OUT [gpu_check options]
# Installs the wheels below into {name}/site (no network), says what the box lacks, runs the check.
set -euo pipefail
PACK="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
OUT="${{1:?usage: bash run.sh OUT [gpu_check options]}}"
shift
PY="${{PYTHON:-python3}}"
if [ ! -f benchmarks/gpu_check.py ]; then
  echo "run.sh: run it from the cifar-tune tree (benchmarks/gpu_check.py not in $PWD)" >&2
  exit 2
fi
(cd "$PACK" && sha256sum --check --quiet SHA256SUMS)
"$PY" - <<'PY' || echo "run.sh: warning: the pack was made for other versions (above); going on" >&2
import sys, torch
want_py, want_torch = "{python}", "{torch}"
ok = sys.version.startswith(want_py + ".") and torch.__version__.startswith(want_torch)
print(f"python {{sys.version.split()[0]}}, torch {{torch.__version__}}; pack made for python {{want_py}}, torch {{want_torch}}")
sys.exit(0 if ok else 1)
PY
rm -rf "$PACK/site" && mkdir -p "$PACK/site" "$OUT"
for wheel in "$PACK"/wheels/*.whl; do  # a wheel is a zip laid out for site-packages: no pip needed
  [ -e "$wheel" ] && "$PY" -m zipfile -e "$wheel" "$PACK/site"
done
export PYTHONPATH="$PACK/site${{PYTHONPATH:+:$PYTHONPATH}}"
"$PY" benchmarks/gpu_check.py --check-env "$@" | tee "$OUT/check-env.txt" || true
exec "$PY" benchmarks/gpu_check.py --subset "$PACK/{subset}" --out "$OUT" "$@"
"""


def pack(folder: Path, data_root: str, python_version: str, torch_version: str, box_has: list[str],
         extra: list[str], n_train: int, n_test: int) -> Path:
    """Write `folder`: wheels of what the box lacks (every package the check needs that `box_has`
    does not list, with their dependencies), a CIFAR-10 subset, manifest.json, SHA256SUMS, run.sh."""
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"--pack: {folder} exists and is not empty; give a new folder")
    wheels = folder / "wheels"
    wheels.mkdir(parents=True)
    wanted = sorted({pip for pip, _ in PACKAGES.values() if pip not in box_has} | set(extra))
    if wanted:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version",
                   python_version, "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                   "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), *wanted]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"--pack: pip download failed (it needs PyPI):\n{done.stderr[-2000:]}")
        # Leave out what the box already has, when it came in as a dependency (torch's, numpy's, ...).
        for wheel in wheels.glob("*.whl"):
            if _dist_name(wheel.name) in {_dist_name(b) for b in box_has}:
                wheel.unlink()
    subset = make_subset(data_root, folder / "cifar-subset.npz", n_train, n_test)
    (folder / "run.sh").write_text(RUN_SH.format(date=datetime.date.today(), python=python_version,
                                                 torch=torch_version, name=folder.name, subset=subset.name))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    sums = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    manifest = {"made": datetime.datetime.now().isoformat(timespec="seconds"), "python_version": python_version,
                "torch_version": torch_version, "box_has": box_has, "downloaded": wanted,
                "wheels": sorted(p.name for p in wheels.glob("*.whl")),
                "subset": {"file": subset.name, "train_images": n_train, "test_images": n_test, "from": data_root},
                "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": digest}
                          for name, digest in sums.items()},
                "run": f"bash {folder.name}/run.sh OUT [gpu_check options]   (from the cifar-tune tree)"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > PACK_LIMIT_BYTES:
        raise SystemExit(f"--pack: {folder} is {size / 2**20:.1f} MB, over 60 MB; lower --subset-train")
    print(f"wrote {folder} ({size / 2**20:.1f} MB): {len(manifest['wheels'])} wheels, {subset.name}, run.sh")
    return folder


def _dist_name(name: str) -> str:
    """A distribution's normalized name, from a wheel's file name or a requirement."""
    return name.split("-")[0].lower().replace("_", "-").replace(".", "-")


# --------------------------------------------------------------------------- data


def synthetic(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Learnable images: each class has its own colour, plus noise (crops and flips don't hide it)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (10, 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        pixels = palette[labels][:, :, None, None] + rng.normal(0, 40, (n, 3, 32, 32))
        return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)

    return (*make(n_train), *make(n_test))


def as_cifar_data(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  val_size: int) -> Any:
    from cifar_tune.data import CifarData, split_train_val

    train_idx, val_idx = split_train_val(len(train_y), val_size, split_seed=0)
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    return CifarData(tx[train_idx], ty[train_idx], tx[val_idx], ty[val_idx], torch.from_numpy(test_x),
                     torch.from_numpy(test_y), [str(i) for i in range(10)], checksums_ok=False)


def make_subset(root: str, path: Path, n_train: int, n_test: int) -> Path:
    from cifar_tune.data import load_cifar10

    files = load_cifar10(root)
    np.savez_compressed(path, train_x=files.train_x[:n_train].numpy(), train_y=files.train_y[:n_train].numpy(),
                        test_x=files.test_x[:n_test].numpy(), test_y=files.test_y[:n_test].numpy())
    size = path.stat().st_size
    if size > SUBSET_LIMIT_BYTES:
        path.unlink()
        raise SystemExit(f"--make-subset: {size / 2**20:.0f} MB is over 50 MB; lower --subset-train")
    print(f"wrote {path} ({size / 2**20:.1f} MB: {n_train} training and {n_test} test images)")
    return path


QUICK_SIZES = (1152, 256)  # training and test images of a --quick run, whatever the source


def load_source(args: argparse.Namespace) -> tuple[Any, str]:
    if args.data:
        from cifar_tune.config import DataConfig
        from cifar_tune.data import load_data

        return load_data(DataConfig(root=args.data, download=False, val_size=args.val_size)), \
            f"CIFAR-10 files at {args.data} (full training split)"
    if args.subset:
        with np.load(args.subset) as f:
            arrays = [f["train_x"], f["train_y"], f["test_x"], f["test_y"]]
        if args.quick:
            arrays = [a[:QUICK_SIZES[i // 2]] for i, a in enumerate(arrays)]
        return as_cifar_data(*arrays, val_size=min(args.val_size, len(arrays[1]) // 10)), \
            f"CIFAR-10 subset {args.subset} ({len(arrays[1])} training, {len(arrays[3])} test images)"
    n_train, n_test = QUICK_SIZES if args.quick else (20000, 2000)
    return as_cifar_data(*synthetic(n_train, n_test), val_size=n_train // 8), \
        f"synthetic learnable images ({n_train} training, {n_test} test; not CIFAR-10: accuracies mean nothing)"


# --------------------------------------------------------------------------- measurements


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, precision: str, n: int, repeats: int = 10) -> float:
    """The yardstick: the device's own matmul rate under this precision's switches and dtype."""
    from cifar_tune.precision import policy

    dtype = getattr(torch, MATMUL_DTYPES[precision])
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with policy("tf32" if precision == "tf32" else "fp32").backend_flags():
        a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def check_tf32(device: torch.device) -> list[dict[str, Any]]:
    """fp32 must be strict IEEE fp32 and tf32 must really use TF32: compare a matmul with float64."""
    from cifar_tune.precision import device_problem, policy

    a = torch.randn(1024, 1024, device=device, dtype=torch.float64)
    b = torch.randn(1024, 1024, device=device, dtype=torch.float64)
    exact = a @ b
    errors = {}
    for name in ("fp32", "tf32"):
        with policy(name).backend_flags():
            errors[name] = ((a.float() @ b.float()).double() - exact).abs().max().item() / exact.abs().max().item()
    rows = [{"check": "fp32 matmul is strict fp32", "ok": errors["fp32"] < 1e-5,
             "detail": f"max relative error vs float64 {errors['fp32']:.1e} (TF32 would be ~1e-3)"}]
    if device.type == "cuda" and device_problem("tf32", str(device)) is None:
        rows.append({"check": "tf32 matmul uses TF32", "ok": errors["tf32"] > 10 * errors["fp32"],
                     "detail": f"max relative error {errors['tf32']:.1e} vs fp32's {errors['fp32']:.1e}"})
    return rows


def check_autocast(device: torch.device, precisions: list[str]) -> list[dict[str, Any]]:
    from cifar_tune.precision import POLICIES, policy

    rows = []
    layer = torch.nn.Linear(64, 64).to(device)
    for name in precisions:
        expected = POLICIES[name].autocast_dtype or torch.float32
        with policy(name).autocast(device.type):
            got = layer(torch.randn(8, 64, device=device)).dtype
        rows.append({"check": f"{name}: forward runs in {str(expected).removeprefix('torch.')}", "ok": got == expected,
                     "detail": f"a Linear under this precision returned {got}"})
    return rows


def check_cuda_graph(data: Any, device: torch.device, precisions: list[str], batch_size: int,
                     steps: int = 20) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training step captured as a CUDA graph against eager steps, per precision: the same seed,
    deterministic kernels and a learning rate fp32 holds exactly (0.0625, constant), so after the same
    steps the weights must be equal bit for bit; and each one's img/s over `steps` timed steps."""
    from cifar_tune.config import ModelConfig, TrainConfig
    from cifar_tune.graphed_step import WARMUP_STEPS
    from cifar_tune.train import Trainer

    checks, speeds = [], []
    for name in precisions:
        weights, ips = {}, {}
        for graphed in (False, True):
            config = TrainConfig(precision=name, epochs=1, batch_size=batch_size, lr=0.0625, schedule="constant",
                                 deterministic=True, cuda_graph=graphed, allow_slow_precision=True)
            trainer = Trainer(config, ModelConfig(), data, device)
            with trainer.policy.backend_flags():
                ips[graphed] = trainer.time_steps(steps, warmup_steps=WARMUP_STEPS + 1)["images_per_s"]
            weights[graphed] = [t.detach().clone() for t in trainer.model.state_dict().values()]
            del trainer
        same = all(torch.equal(a, b) for a, b in zip(weights[False], weights[True], strict=False))
        worst = max(((a.float() - b.float()).abs().max().item() for a, b in zip(weights[False], weights[True], strict=False)),
                    default=0.0)
        checks.append({"check": f"{name}: CUDA-graph steps equal eager steps", "ok": same,
                       "detail": f"{steps + WARMUP_STEPS + 1} steps, deterministic kernels: bit-equal weights "
                                 f"{same} (largest difference {worst:.1e}); replay {ips[True]:.0f} img/s, "
                                 f"eager {ips[False]:.0f} img/s"})
        speeds.append({"precision": name, "graphed_images_per_s": ips[True], "eager_images_per_s": ips[False],
                       "speedup": ips[True] / ips[False]})
    torch.use_deterministic_algorithms(False)  # the training and exports after run as a study would
    torch.cuda.empty_cache()
    return checks, speeds


def train_interleaved(data: Any, device: torch.device, precisions: list[str], epochs: int,
                      batch_size: int) -> tuple[dict[str, Any], dict[str, list[float]], dict[str, float]]:
    """Every precision trains epoch by epoch in turn, each with the device to itself."""
    from cifar_tune.config import ModelConfig, TrainConfig
    from cifar_tune.train import Trainer

    trainers, speeds, accuracy = {}, {p: [] for p in precisions}, {}
    for name in precisions:
        config = TrainConfig(precision=name, epochs=epochs, batch_size=batch_size, eval_batch_size=1000,
                             allow_slow_precision=True)
        trainers[name] = Trainer(config, ModelConfig(), data, device)
    for epoch in range(epochs):
        for name, trainer in trainers.items():
            # Trainer sets TF32 switches at construction; with several alive, each epoch sets its own.
            with trainer.policy.backend_flags():
                metrics = trainer.train_epoch()
            speeds[name].append(metrics["train_images_per_s"])
            print(f"epoch {epoch + 1}/{epochs} {name}: {metrics['train_images_per_s']:.0f} img/s, "
                  f"val_acc {metrics['val_acc']:.3f}", flush=True)
    for name, trainer in trainers.items():
        with trainer.policy.backend_flags():
            accuracy[name] = trainer.test()["test_acc"]
    return trainers, speeds, accuracy


# --------------------------------------------------------------------------- AOTInductor, when its package will not load

# Each step in a child of its own (a crash in native code takes only the child; faulthandler prints its
# Python stack), so one run tells a broken package from a broken loader. argv: package, device.
AOTI_STEPS = {
    "read the package's metadata": "import sys, torch\n"
        "meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(sys.argv[1], 'model')\n"
        "print(sorted(meta.items()))\n",
    "load it (device_index -1, the default)": "import sys, torch\n"
        "torch._inductor.aoti_load_package(sys.argv[1])\nprint('loaded')\n",
    "initialise the device, then load it on its index": "import sys, torch\n"
        "device = torch.device(sys.argv[2])\ntorch.zeros(1, device=device)\n"
        "index = (device.index or 0) if device.type == 'cuda' else -1\n"
        "torch._inductor.aoti_load_package(sys.argv[1], device_index=index)\nprint('loaded')\n",
    "load it with a single-threaded runner": "import sys, torch\n"
        "torch._inductor.aoti_load_package(sys.argv[1], run_single_threaded=True)\nprint('loaded')\n",
}


def diagnose_aoti(package: Path, device: torch.device, timeout_s: float = 90.0) -> list[dict[str, str]]:
    """One row per step: what it is, `ok` or how it ended (exit status, signal, timeout), and the tail of
    its output; then the package's files and what its shared library links against (ldd)."""
    from cifar_tune.export import exit_status

    rows = []
    for step, script in AOTI_STEPS.items():
        try:
            done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script, str(package), str(device)],
                                  capture_output=True, text=True, timeout=timeout_s)
            status = "ok" if done.returncode == 0 else exit_status(done.returncode)
            output = (done.stdout + done.stderr).strip()
        except subprocess.TimeoutExpired:
            status, output = f"no answer in {timeout_s:.0f} s (hung)", ""
        rows.append({"step": step, "status": status, "output": output[-1200:]})
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(package) as archive:
        names = archive.namelist()
        rows.append({"step": "the package's files", "status": f"{len(names)} files",
                     "output": "\n".join(f"{i.filename} {i.file_size}" for i in archive.infolist())[-1200:]})
        for name in (n for n in names if n.endswith(".so")):
            library = archive.extract(name, folder)
            try:
                linked = subprocess.run(["ldd", library], capture_output=True, text=True, timeout=30)
                output = (linked.stdout + linked.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                output = f"ldd could not run: {exc}"
            rows.append({"step": f"ldd {name}", "status": "listed", "output": output[-2000:]})
    return rows


# --------------------------------------------------------------------------- the report


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# GPU check: {result['device_name']}", "",
             f"{result['machine']}", "", f"Data: {result['data']}. Epochs: {result['epochs']}, batch "
             f"{result['batch_size']}. Wall time {result['wall_s']:.0f} s of a {result['budget_s']:.0f} s budget.", "",
             "## Training, one precision at a time, epochs interleaved", "",
             "| precision | img/s (median) | achieved TFLOP/s | matmul TFLOP/s (same run) | share | test accuracy "
             "| CUDA graph |", "|---|---|---|---|---|---|---|"]
    for row in result["training"]:
        lines.append(f"| {row['precision']} | {row['images_per_s']:.0f} | {row['achieved_tflops']:.2f} | "
                     f"{row['matmul_tflops']:.2f} | {row['share_of_matmul']:.0%} | {row['test_acc']:.4f} "
                     f"| {'yes' if row.get('cuda_graph') else 'no'} |")
    if result.get("cuda_graph"):
        lines += ["", "## The training step as a CUDA graph against eager (deterministic kernels, same steps)", "",
                  "| precision | replayed img/s | eager img/s | speed-up |", "|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['graphed_images_per_s']:.0f} | {r['eager_images_per_s']:.0f} | "
                  f"{r['speedup']:.2f}x |" for r in result["cuda_graph"]]
    lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'ok' if c['ok'] else 'FAILED'} | {c['detail']} |" for c in result["checks"]]
    lines += ["", "## Deployment variants (fp32-trained weights)", "",
              "| variant | runtime | device | parity | accuracy change (pp) | agreement | "
              + " | ".join(f"p50 ms @ {b}" for b in result["batch_sizes"]) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(result["batch_sizes"])]
    for row in result["deployment"]:
        p50 = [f"{row['p50_ms'].get(str(b), float('nan')):.3f}" for b in result["batch_sizes"]]
        lines.append(f"| {row['variant']} | {row.get('runtime', '')} | {row.get('device', '')} | {row['status']} | "
                     f"{row.get('accuracy_change_pp', float('nan')):+.2f} | {row.get('agreement', float('nan')):.4f} | "
                     + " | ".join(p50) + " |")
    if result.get("aoti_diagnosis"):
        lines += ["", "## AOTInductor: why its package does not load (each step in a fresh process)", ""]
        for row in result["aoti_diagnosis"]:
            lines += [f"- {row['step']}: **{row['status']}**", "", "```", row["output"] or "(no output)", "```", ""]
    lines += ["", f"ONNX Runtime: {result['onnx_note']}", "", "## Not run", ""]
    lines += [f"- {item['what']}: {item['why']}" for item in result["not_run"]] or ["- nothing"]
    lines += ["", f"ONNX Runtime providers that load here: {', '.join(result['ort_providers'])}.", ""]
    return "\n".join(lines)


def onnx_placement(device: torch.device, skip_cpu_onnx: bool) -> tuple[list[str], str]:
    """(ONNX variants to leave out, a sentence for the report) from the providers that really load."""
    from cifar_tune.machine import ort_provider_loads

    if device.type != "cuda":
        return [], "on the CPU provider, as the whole check."
    problem = ort_provider_loads("CUDAExecutionProvider", device.index or 0)
    if problem is None:
        return [], "CUDA provider loads: onnx_fp32 and onnx_fp16 ran on the GPU (IO binding); onnx_int8 on the CPU."
    if skip_cpu_onnx:
        return ["onnx_fp32", "onnx_int8"], (f"no CUDA provider loads here ({problem}); onnx_fp32 and onnx_int8 "
                                            "skipped (--skip-cpu-onnx).")
    return [], (f"no CUDA provider loads here ({problem}); onnx_fp32 and onnx_int8 were measured on the CPU "
                "provider, and their rows say device cpu: they are CPU numbers, not the GPU's.")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cifar_tune.bench import bench_checkpoint
    from cifar_tune.config import ExportConfig
    from cifar_tune.machine import device_name, ort_providers_that_load
    from cifar_tune.models import forward_flops_per_image
    from cifar_tune.precision import POLICIES, device_problem

    started = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here (use --device cpu)")
    data, source = load_source(args)
    not_run: list[dict[str, str]] = []
    precisions = []
    for name in POLICIES:
        problem = device_problem(name, str(device))
        if problem is None or (args.allow_slow and name != "tf32"):
            precisions.append(name)
        else:
            not_run.append({"what": f"training in {name}", "why": problem})
    matmul_n = 1024 if args.quick else (8192 if device.type == "cuda" else 2048)
    matmul = {name: matmul_tflops(device, name, matmul_n) for name in precisions}

    checks = check_tf32(device) + check_autocast(device, precisions)
    graph_speeds: list[dict[str, Any]] = []
    if device.type == "cuda":
        graph_checks, graph_speeds = check_cuda_graph(data, device, precisions, args.batch_size)
        checks += graph_checks
    else:
        not_run.append({"what": "the training step as a CUDA graph", "why": "needs a CUDA device"})
    trainers, speeds, accuracy = train_interleaved(data, device, precisions, args.epochs, args.batch_size)
    if "amp_fp16" in trainers:
        trainer = trainers["amp_fp16"]
        scaler, fused = trainer.scaler, bool(trainer.optimizer.defaults.get("fused"))
        checks.append({"check": "amp_fp16: GradScaler active", "ok": scaler.is_enabled() and scaler.get_scale() > 1,
                       "detail": f"enabled {scaler.is_enabled()}, scale {scaler.get_scale():g} after training"})
        if device.type == "cuda":
            checks.append({"check": "amp_fp16: fused optimizer (no host sync per step)", "ok": fused,
                           "detail": f"optimizer fused={fused}"})
    flops = 3 * forward_flops_per_image()  # forward + two backward GEMMs per layer
    training = []
    for name in precisions:
        ips = float(np.median(speeds[name]))
        training.append({"precision": name, "images_per_s": ips, "achieved_tflops": ips * flops / 1e12,
                         "matmul_tflops": matmul[name], "share_of_matmul": ips * flops / 1e12 / matmul[name],
                         "test_acc": accuracy[name], "per_epoch_images_per_s": speeds[name],
                         "cuda_graph": trainers[name].graphed})

    batch_sizes = [1, 8] if args.quick else [1, 64, 512]
    leave_out, onnx_note = onnx_placement(device, args.skip_cpu_onnx)
    wanted = [v for v in (args.variants.split(",") if args.variants else default_variants()) if v not in leave_out]
    not_run += [{"what": f"variant {name}", "why": "--skip-cpu-onnx: no CUDA provider loads"} for name in leave_out]
    settings = ExportConfig(batch_sizes=batch_sizes, warmup_runs=1 if args.quick else 5,
                            min_runs=3 if args.quick else 50, min_duration_s=0.0 if args.quick else 1.0,
                            calibration_images=64 if args.quick else 512, end_to_end=False, variants=wanted)
    # Keep time for timing every variant at every batch size (and their first calls) after the builds.
    timing_reserve = len(wanted) * len(batch_sizes) * (settings.min_duration_s + 1.0)
    deadline = started + args.budget_s - timing_reserve
    deployment = []
    with tempfile.TemporaryDirectory() as checkpoint:
        trainers["fp32"].save(checkpoint)
        try:
            bench = bench_checkpoint(checkpoint, Path(args.out) / "export", data.test_x, data.test_y, data.train_x,
                                     settings, device=device, threads=torch.get_num_threads(), deadline=deadline)
        except Exception as exc:  # report it, with the traceback, rather than lose the training results
            not_run.append({"what": "export and bench", "why": traceback.format_exc(limit=3) or str(exc)})
            bench = {"parity": [], "bench": [], "failed": {}}
    for row in (r for r in bench["parity"] if r["status"] != "skipped"):  # skipped ones go under "Not run"
        timings = {str(b["batch_size"]): b["p50_ms"] for b in bench["bench"]
                   if b["variant"] == row["variant"] and "p50_ms" in b}
        deployment.append({**row, "p50_ms": timings})
    not_run += [{"what": f"variant {name}", "why": why} for name, why in bench["failed"].items()]
    package = Path(args.out) / "export" / "model.pt2"  # built by this run: only a failed load leaves it behind
    load_failed = "does not load in a fresh process" in bench["failed"].get("aoti", "")
    diagnosis = diagnose_aoti(package, device) if load_failed and package.is_file() else []
    not_run += [{"what": f"variant {row['variant']}", "why": row["reason"]} for row in bench["parity"]
                if row["status"] == "skipped"]

    return {"device": str(device), "device_name": device_name(device),
            "machine": f"torch {torch.__version__}, Python {platform.python_version()}, "
                       f"{torch.get_num_threads()} CPU threads",
            "data": source, "epochs": args.epochs, "batch_size": args.batch_size, "batch_sizes": batch_sizes,
            "training": training, "cuda_graph": graph_speeds, "checks": checks, "deployment": deployment, "not_run": not_run,
            "aoti_diagnosis": diagnosis,
            "onnx_note": onnx_note, "ort_providers": ort_providers_that_load(device.index or 0),
            "budget_s": args.budget_s, "wall_s": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-env", action="store_true", help="say what this box lacks for each part, and exit "
                                                                  "(non-zero when anything is missing)")
    parser.add_argument("--pack", metavar="DIR", help="write DIR for a GPU box (needs --data and PyPI), and exit")
    parser.add_argument("--python-version", default="3.12", help="the box's Python, for --pack's wheels")
    parser.add_argument("--torch-version", default="2.11", help="the box's torch, checked by run.sh")
    parser.add_argument("--box-has", default=",".join(BOX_HAS), help="pip names the box has (--pack leaves them out)")
    parser.add_argument("--with", dest="extra", default="", help="more pip names for --pack, comma-separated")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda where torch sees a GPU)")
    parser.add_argument("--quick", action="store_true", help="a minutes-long run (CI): tiny data, 1 epoch")
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/ (the full set)")
    parser.add_argument("--subset", help="an .npz written by --make-subset or --pack")
    parser.add_argument("--make-subset", metavar="FILE", help="write a <= 50 MB subset of --data to FILE and exit")
    parser.add_argument("--subset-train", type=int, default=12000, help="training images in a subset")
    parser.add_argument("--subset-test", type=int, default=2000, help="test images in a subset")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per precision (default 3; 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 256; 64 with --quick)")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--allow-slow", action="store_true", help="also train precisions the device emulates")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget: variants whose build no "
                                                                      "longer fits are dropped (default 420)")
    parser.add_argument("--skip-cpu-onnx", action="store_true", help="where no CUDA provider loads, skip the ONNX "
                                                                     "variants instead of timing them on the CPU")
    parser.add_argument("--out", default="gpu-check", help="folder for report.md, gpu_check.json, export/")
    parser.add_argument("--variants", help="deployment variants, comma-separated (default: the registry's "
                                           "gpu-check list: all but compiled_max_autotune, minutes of kernel search)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, not {args.budget_s:g}")
    if args.variants and torch is not None:
        from cifar_tune.variants import VARIANTS

        if unknown := [v for v in args.variants.split(",") if v not in VARIANTS]:
            parser.error(f"--variants: unknown {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
    if args.check_env:
        rows = check_env(args.device, args.variants.split(",") if args.variants else None)
        print(env_report(rows))
        return 1 if any(not r["ok"] and not r["optional"] for r in rows) else 0
    if args.pack or args.make_subset:
        if not args.data:
            parser.error("--pack and --make-subset need --data")
        if torch is None or np is None:
            parser.error("--pack and --make-subset need torch and numpy here (to read CIFAR-10)")
        if args.make_subset:
            make_subset(args.data, Path(args.make_subset), args.subset_train, args.subset_test)
        else:
            pack(Path(args.pack), args.data, args.python_version, args.torch_version,
                 [b for b in args.box_has.split(",") if b], [e for e in args.extra.split(",") if e],
                 args.subset_train, args.subset_test)
        return 0
    missing = [r for r in check_env("cpu", ["eager_fp32"]) if not r["ok"] and r["part"].startswith(("everything",
                                                                                                  "training"))]
    if missing:  # the check cannot start: say what to install instead of a traceback at an import
        print(env_report(missing), file=sys.stderr)
        return 2
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.batch_size = args.batch_size or (64 if args.quick else 256)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "report.md").write_text(markdown(result))
    print(markdown(result))
    failed = [c["check"] for c in result["checks"] if not c["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
