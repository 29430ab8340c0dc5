"""One command that proves every GPU path, without Ray: training in each precision, that each
precision does what it says, and every deployment variant with parity and latency.

    python benchmarks/gpu_check.py --data ../shared/data --out gpu-check        # on a GPU box
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check    # the same code on a CPU (CI)

A GPU box often has torch and onnxruntime but no Ray, no network and little room for data: this
script needs only cifar_tune's core (torch, torchvision, onnx, onnxruntime, numpy, pandas,
pydantic, pyyaml). The full CIFAR-10 (180 MB) may not travel; carry a subset instead:

    python benchmarks/gpu_check.py --data ../shared/data --make-subset cifar-subset.npz   # <= 50 MB
    python benchmarks/gpu_check.py --subset cifar-subset.npz --out gpu-check

A box without pydantic takes it as wheels (3 MB), fetched where pip reaches PyPI for the box's
Python (3.12 here) and installed there without a network:

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels pydantic
    pip install --no-index --no-deps --target /tmp/site wheels/*.whl    # on the box
    PYTHONPATH=/tmp/site python benchmarks/gpu_check.py --subset cifar-subset.npz --out gpu-check

Rehearsed that way on a CPU (Python 3.12.1, torch 2.11.0, onnxruntime 1.30.0, no Ray or pydantic
installed, `--device cpu --quick`): the whole report, every CPU variant built and in parity.

Without --data or --subset it trains on learnable synthetic images (one colour per class), and the
report says so. What it does, in order:

1. matmul TFLOP/s per dtype on the device (the yardstick for training throughput);
2. checks: TF32 off under fp32 and on under tf32 (a matmul against float64), autocast dtypes as
   named, the GradScaler active under amp_fp16;
3. trains every precision the device runs well with the Trainer, one precision at a time with the
   device to itself, epochs interleaved across precisions; img/s, achieved TFLOP/s, test accuracy;
4. exports the fp32-trained weights through every variant on the device (cifar_tune.bench):
   parity against eager fp32 and p50/p90/p99 latency;
5. writes report.md and gpu_check.json to --out, listing what could not run and why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a copied tree, uninstalled
from cifar_tune.bench import bench_checkpoint, cpu_name  # noqa: E402
from cifar_tune.config import DataConfig, ExportConfig, ModelConfig, TrainConfig  # noqa: E402
from cifar_tune.data import CifarData, load_cifar10, load_data, split_train_val  # noqa: E402
from cifar_tune.export import ort_providers  # noqa: E402
from cifar_tune.models import forward_flops_per_image  # noqa: E402
from cifar_tune.names import VARIANTS  # noqa: E402
from cifar_tune.precision import POLICIES, device_problem, policy  # noqa: E402
from cifar_tune.trainables.train import Trainer  # noqa: E402

# Every variant: those the device cannot run are listed under "Not run" with the reason.
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "compiled_max_autotune"]

SUBSET_LIMIT_BYTES = 50 * 2**20
MATMUL_DTYPES = {"fp32": ("fp32", torch.float32), "tf32": ("tf32", torch.float32),
                 "amp_fp16": ("fp32", torch.float16), "amp_bf16": ("fp32", torch.bfloat16)}


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
                  val_size: int) -> CifarData:
    train_idx, val_idx = split_train_val(len(train_y), val_size, split_seed=0)
    tx, ty = torch.from_numpy(train_x), torch.from_numpy(train_y)
    return CifarData(tx[train_idx], ty[train_idx], tx[val_idx], ty[val_idx], torch.from_numpy(test_x),
                     torch.from_numpy(test_y), [str(i) for i in range(10)], checksums_ok=False)


def make_subset(root: str, path: Path, n_train: int, n_test: int) -> Path:
    files = load_cifar10(root)
    np.savez_compressed(path, train_x=files.train_x[:n_train].numpy(), train_y=files.train_y[:n_train].numpy(),
                        test_x=files.test_x[:n_test].numpy(), test_y=files.test_y[:n_test].numpy())
    size = path.stat().st_size
    if size > SUBSET_LIMIT_BYTES:
        path.unlink()
        raise SystemExit(f"--make-subset: {size / 2**20:.0f} MB is over 50 MB; lower --subset-train")
    print(f"wrote {path} ({size / 2**20:.1f} MB: {n_train} training and {n_test} test images)")
    return path


def load_source(args: argparse.Namespace) -> tuple[CifarData, str]:
    if args.data:
        return load_data(DataConfig(root=args.data, download=False, val_size=args.val_size)), \
            f"CIFAR-10 files at {args.data} (full training split)"
    if args.subset:
        with np.load(args.subset) as f:
            arrays = f["train_x"], f["train_y"], f["test_x"], f["test_y"]
        return as_cifar_data(*arrays, val_size=min(args.val_size, len(arrays[1]) // 10)), \
            f"CIFAR-10 subset {args.subset} ({len(arrays[1])} training, {len(arrays[3])} test images)"
    n_train, n_test = (1152, 256) if args.quick else (20000, 2000)
    return as_cifar_data(*synthetic(n_train, n_test), val_size=n_train // 8), \
        f"synthetic learnable images ({n_train} training, {n_test} test; not CIFAR-10: accuracies mean nothing)"


# --------------------------------------------------------------------------- measurements


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, precision: str, n: int, repeats: int = 10) -> float:
    flags, dtype = MATMUL_DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with policy(flags).backend_flags():
        a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def check_tf32(device: torch.device) -> list[dict[str, Any]]:
    """fp32 must be strict IEEE fp32 and tf32 must really use TF32: compare a matmul with float64."""
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
    rows = []
    layer = torch.nn.Linear(64, 64).to(device)
    for name in precisions:
        expected = POLICIES[name].autocast_dtype or torch.float32
        with policy(name).autocast(device.type):
            got = layer(torch.randn(8, 64, device=device)).dtype
        rows.append({"check": f"{name}: forward runs in {str(expected).removeprefix('torch.')}", "ok": got == expected,
                     "detail": f"a Linear under this precision returned {got}"})
    return rows


def train_interleaved(data: CifarData, device: torch.device, precisions: list[str], epochs: int,
                      batch_size: int) -> tuple[dict[str, Trainer], dict[str, list[float]], dict[str, float]]:
    """Every precision trains epoch by epoch in turn, each with the device to itself."""
    trainers, speeds, times = {}, {p: [] for p in precisions}, {}
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
            times[name] = trainer.test()["test_acc"]
    return trainers, speeds, times


# --------------------------------------------------------------------------- the report


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# GPU check: {result['device_name']}", "",
             f"{result['machine']}", "", f"Data: {result['data']}. Epochs: {result['epochs']}, batch "
             f"{result['batch_size']}. Wall time {result['wall_s']:.0f} s.", "",
             "## Training, one precision at a time, epochs interleaved", "",
             "| precision | img/s (median) | achieved TFLOP/s | matmul TFLOP/s (same run) | share | test accuracy |",
             "|---|---|---|---|---|---|"]
    for row in result["training"]:
        lines.append(f"| {row['precision']} | {row['images_per_s']:.0f} | {row['achieved_tflops']:.2f} | "
                     f"{row['matmul_tflops']:.2f} | {row['share_of_matmul']:.0%} | {row['test_acc']:.4f} |")
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
    lines += ["", "## Not run", ""]
    lines += [f"- {item['what']}: {item['why']}" for item in result["not_run"]] or ["- nothing"]
    lines += ["", f"ONNX Runtime providers here: {', '.join(result['ort_providers'])}.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
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
    trainers, speeds, accuracy = train_interleaved(data, device, precisions, args.epochs, args.batch_size)
    if "amp_fp16" in trainers:
        scaler = trainers["amp_fp16"].scaler
        checks.append({"check": "amp_fp16: GradScaler active", "ok": scaler.is_enabled() and scaler.get_scale() > 1,
                       "detail": f"enabled {scaler.is_enabled()}, scale {scaler.get_scale():g} after training"})
    flops = 3 * forward_flops_per_image()  # forward + two backward GEMMs per layer
    training = []
    for name in precisions:
        ips = statistics.median(speeds[name])
        training.append({"precision": name, "images_per_s": ips, "achieved_tflops": ips * flops / 1e12,
                         "matmul_tflops": matmul[name], "share_of_matmul": ips * flops / 1e12 / matmul[name],
                         "test_acc": accuracy[name], "per_epoch_images_per_s": speeds[name]})

    batch_sizes = [1, 8] if args.quick else [1, 64, 512]
    settings = ExportConfig(batch_sizes=batch_sizes, warmup_runs=1 if args.quick else 5,
                            min_runs=3 if args.quick else 50, min_duration_s=0.0 if args.quick else 1.0,
                            calibration_images=64 if args.quick else 512, end_to_end=False,
                            variants=args.variants.split(",") if args.variants else DEFAULT_VARIANTS)
    deployment = []
    with tempfile.TemporaryDirectory() as checkpoint:
        trainers["fp32"].save(checkpoint)
        try:
            bench = bench_checkpoint(checkpoint, Path(args.out) / "export", data.test_x, data.test_y, data.train_x,
                                     settings, device=device, threads=torch.get_num_threads())
        except Exception as exc:  # report it, with the traceback, rather than lose the training results
            not_run.append({"what": "export and bench", "why": traceback.format_exc(limit=3) or str(exc)})
            bench = {"parity": [], "bench": [], "failed": {}}
    for row in bench["parity"]:
        timings = {str(b["batch_size"]): b["p50_ms"] for b in bench["bench"]
                   if b["variant"] == row["variant"] and "p50_ms" in b}
        deployment.append({**row, "p50_ms": timings})
    not_run += [{"what": f"variant {name}", "why": why} for name, why in bench["failed"].items()]
    not_run += [{"what": f"variant {row['variant']}", "why": row["reason"]} for row in bench["parity"]
                if row["status"] == "skipped"]

    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_name(), "machine": f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
            "data": source, "epochs": args.epochs, "batch_size": args.batch_size, "batch_sizes": batch_sizes,
            "training": training, "checks": checks, "deployment": deployment, "not_run": not_run,
            "ort_providers": ort_providers(), "wall_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="a minutes-long run (CI): tiny data, 1 epoch")
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/ (the full set)")
    parser.add_argument("--subset", help="an .npz written by --make-subset")
    parser.add_argument("--make-subset", metavar="FILE", help="write a <= 50 MB subset of --data to FILE and exit")
    parser.add_argument("--subset-train", type=int, default=12000, help="training images in --make-subset")
    parser.add_argument("--subset-test", type=int, default=2000, help="test images in --make-subset")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per precision (default 3; 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 256; 64 with --quick)")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--allow-slow", action="store_true", help="also train precisions the device emulates")
    parser.add_argument("--out", default="gpu-check", help="folder for report.md, gpu_check.json, export/")
    parser.add_argument("--variants", help="deployment variants, comma-separated (default: all but "
                                           "compiled_max_autotune, whose kernel search takes minutes)")
    args = parser.parse_args(argv)
    if args.make_subset:
        if not args.data:
            parser.error("--make-subset needs --data")
        make_subset(args.data, Path(args.make_subset), args.subset_train, args.subset_test)
        return 0
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
