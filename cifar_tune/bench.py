"""Parity and latency of a trial's deployment variants: what `cifar-tune bench` and the post-trial
hook run, and what they write (`export/parity.json`, `export/bench.json`).

Parity: every variant's logits on the test set against eager fp32: accuracy, agreement of the
predicted class, max / mean absolute logit difference. fp32 variants must agree on
`fp32_min_agreement` of the images; bf16 / fp16 / int8 ones may lose at most
`max_accuracy_drop_pp` points. Outside that: `parity_failed`, and never the "fastest variant".

Latency: per variant and batch size, the first call timed apart, warm-up runs, then timed runs
until both `min_runs` and `min_duration_s` are reached; p50 with a 95% interval from order
statistics, p90 / p99 only where the runs support them (10 / 100 at least), images/s (batch /
p50), and peak memory. Per variant also the load time and the artifact's file size; provenance
(versions, CPU, GPU UUID and driver, load average) on every row. The input is already
where the variant wants it (on the GPU, bound for ONNX Runtime), so only compute is timed, and
CUDA work is synchronized before every clock read.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar_tune.config import DataConfig, ExportConfig, load_saved_config
from cifar_tune.data import MEAN, STD, DataError, TorchvisionCIFAR10, batches_dir, load_data, normalize
from cifar_tune.energy import EnergyMeter, nvml_handle
from cifar_tune.errors import CifarTuneError, short_error
from cifar_tune.export import Variant, build_variants, load_best_model
from cifar_tune.names import (
    BENCH_FILE,
    BEST_FILE,
    CHECKPOINT_GLOB,
    CONFIG_FILE,
    EXPORT_DIR,
    PARITY_FILE,
    TRIAL_PARAMS_FILE,
)
from cifar_tune.precision import policy


def environment(threads: int, device: torch.device | None = None) -> dict[str, Any]:
    """Provenance every row carries: versions, threads, the CPU, how busy the machine was when the
    benchmark started (1-minute load average), and on CUDA the GPU's UUID, CUDA and cuDNN versions,
    and (where NVML is importable) driver, SM clock and power limit. The device's name goes per row:
    an onnx_int8 row runs on the CPU even when the others ran on a GPU."""
    import onnx
    import onnxruntime

    env: dict[str, Any] = {
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "threads": threads,
        "cpu_name": cpu_name(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if device is not None and device.type == "cuda":
        env.update(gpu_uuid=str(torch.cuda.get_device_properties(device).uuid), cuda_version=torch.version.cuda,
                   cudnn_version=torch.backends.cudnn.version(), **_nvml(device))
    return env


def _nvml(device: torch.device) -> dict[str, Any]:
    """Driver, SM clock (MHz) and power limit (W) from NVML, where pynvml is installed."""
    try:
        pynvml, handle = nvml_handle(device)
        return {"driver_version": pynvml.nvmlSystemGetDriverVersion(),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000}
    except Exception:  # no NVML, or present but unusable (no driver access): provenance stays partial
        return {}


def resident_mb() -> float:
    """This process's resident set (MB) from /proc; NaN where there is none."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return math.nan
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


# --------------------------------------------------------------------------- parity


def logits_of(variant: Variant, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([variant.predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def parity(variant: Variant, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
           settings: ExportConfig) -> dict[str, Any]:
    """Compare one variant with the eager fp32 logits `reference` on normalized test images."""
    logits = logits_of(variant, images)
    diff = (logits - reference).abs()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    reference_accuracy = (reference.argmax(1) == labels).float().mean().item()
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    change_pp = 100 * (accuracy - reference_accuracy)
    if variant.precision == "fp32":
        ok = agreement >= settings.fp32_min_agreement
        tolerance = f"agreement >= {settings.fp32_min_agreement}"
    else:
        ok = change_pp >= -settings.max_accuracy_drop_pp
        tolerance = f"accuracy change >= -{settings.max_accuracy_drop_pp} pp"
    return {
        "variant": variant.name, "variant_precision": variant.precision, "runtime": variant.runtime,
        "device": str(variant.device), "images": len(labels), "accuracy": accuracy,
        "accuracy_change_pp": change_pp, "agreement": agreement,
        "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
        "tolerance": tolerance, "status": "ok" if ok else "parity_failed",
    }


# --------------------------------------------------------------------------- latency


def median_interval(times: list[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median from order statistics: [x(r), x(n-r+1)] of the
    sorted sample, r the largest rank whose binomial tail P(B < r), B ~ Bin(n, 1/2), stays under
    (1 - confidence) / 2. (NaN, NaN) when the sample is too small for one (n < 6 at 95%)."""
    x = np.sort(np.asarray(times, dtype=float))
    n, tail = len(x), (1 - confidence) / 2
    r, below = 0, 0.0  # invariant: below = P(B <= r - 1)
    while r < n // 2:
        below_next = below + math.comb(n, r) / 2**n
        if below_next > tail:
            break
        below, r = below_next, r + 1
    return (float(x[r - 1]), float(x[n - r])) if r >= 1 else (math.nan, math.nan)


def percentile_or_nan(times: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile where the sample supports it: at least 1 / (1 - q/100) runs (p90: 10,
    p99: 100); below that it would only be the maximum under another name, so NaN."""
    return float(np.percentile(times, q)) if len(times) >= round(1 / (1 - q / 100)) else math.nan


def uses_cuda_events(variant: Variant) -> bool:
    """Torch variants on a GPU are timed with CUDA events on their stream: the GPU's own clock
    around the work, without the host's wake-up after a synchronize. ONNX Runtime's CUDA provider
    runs on its own stream and synchronizes it before `run` returns, so its calls are timed on the
    host clock (and each row says which: `timer`)."""
    return variant.device.type == "cuda" and variant.runtime == "torch"


class LatencyMeter:
    """The timed runs of one variant at one batch size, gathered over several rounds.

    `start` makes the first call (timed apart: kernel choice, allocation, lazy init) and the
    warm-up runs, and measures memory; each `time_round` adds timed runs; `result` summarizes
    them all. Interleaving rounds of every variant (`measure_latencies`) puts slow drift of the
    machine on every variant alike instead of on whichever ran during it."""

    def __init__(self, variant: Variant, batch_size: int) -> None:
        self.variant, self.batch_size = variant, batch_size
        self.x = variant.prepare(torch.randn(batch_size, 3, 32, 32))
        self.times: list[float] = []
        self.first_call_s = math.nan
        self.peak_memory_mb = math.nan
        self.events = uses_cuda_events(variant)
        self.energy = EnergyMeter.for_device(variant.device)
        self.energy_j: float | None = 0.0 if self.energy.available else None  # over the timed runs

    def _call(self) -> float:
        if self.events:
            with torch.cuda.device(self.variant.device):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                self.variant.run(self.x)
                end.record()
                end.synchronize()
                return begin.elapsed_time(end) / 1e3  # ms -> s
        t0 = time.perf_counter()
        self.variant.run(self.x)
        self.variant.sync()
        return time.perf_counter() - t0

    def start(self, warmup_runs: int) -> None:
        cuda = self.variant.device.type == "cuda"
        if cuda:
            self.variant.sync()
            torch.cuda.reset_peak_memory_stats(self.variant.device)
        rss_before = resident_mb()
        t0 = time.perf_counter()
        self.variant.run(self.x)
        self.variant.sync()
        self.first_call_s = time.perf_counter() - t0  # wall clock: what a caller waits the first time
        for _ in range(warmup_runs):
            self.variant.run(self.x)
        self.variant.sync()
        # GPU: the peak allocated by torch at this batch size (ONNX Runtime's own arena is not
        # counted); CPU: how much the resident set grew over the first call and the warm-up.
        self.peak_memory_mb = (torch.cuda.max_memory_allocated(self.variant.device) / 1e6 if cuda
                               else resident_mb() - rss_before)

    def time_round(self, min_runs: int, min_duration_s: float) -> None:
        started, runs, energy_start = time.perf_counter(), 0, self.energy.read()
        while runs < min_runs or time.perf_counter() - started < min_duration_s:
            self.times.append(self._call())
            runs += 1
        used = self.energy.joules_since(energy_start)
        if self.energy_j is not None and used is not None:
            self.energy_j += used

    def result(self) -> dict[str, Any]:
        """p50 with its 95% interval (order statistics), p90 and p99 where there are enough runs
        for them (else empty: see `runs`), mean, images/s, first call, memory, the clock used."""
        times = self.times
        p50 = float(np.percentile(times, 50))
        low, high = median_interval(times)
        return {"batch_size": self.batch_size, "runs": len(times), "first_call_ms": 1e3 * self.first_call_s,
                "peak_memory_mb": self.peak_memory_mb, "p50_ms": 1e3 * p50, "p50_ci_low_ms": 1e3 * low,
                "p50_ci_high_ms": 1e3 * high, "p90_ms": 1e3 * percentile_or_nan(times, 90),
                "p99_ms": 1e3 * percentile_or_nan(times, 99), "mean_ms": 1e3 * float(np.mean(times)),
                "images_per_s": self.batch_size / p50, "timer": "cuda_events" if self.events else "wall_clock",
                # The device's energy over the timed runs, per image (the whole device: all it ran meanwhile).
                "energy_mj_per_image": (1e3 * self.energy_j / (len(times) * self.batch_size)
                                        if self.energy_j else math.nan),
                "energy_source": self.energy.describe()}


def measure_latencies(variants: list[Variant], batch_sizes: list[int],
                      settings: ExportConfig) -> dict[tuple[str, int], dict[str, Any]]:
    """Every variant at every batch size: first calls and warm-ups, then `settings.rounds` rounds,
    each timing every (variant, batch size) in turn for its share of `min_runs` and
    `min_duration_s`. {(variant name, batch size): latency row, or {"error": ...} where it failed
    (e.g. out of memory at the largest batch)}."""
    meters: dict[tuple[str, int], LatencyMeter] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for variant in variants:
        for batch_size in batch_sizes:
            try:
                meter = LatencyMeter(variant, batch_size)
                meter.start(settings.warmup_runs)
                meters[(variant.name, batch_size)] = meter
            except Exception as exc:
                rows[(variant.name, batch_size)] = {"batch_size": batch_size, "error": short_error(exc)}
    runs_per_round = math.ceil(settings.min_runs / settings.rounds)
    for _ in range(settings.rounds):
        for key, meter in list(meters.items()):
            try:
                meter.time_round(runs_per_round, settings.min_duration_s / settings.rounds)
            except Exception as exc:
                rows[key] = {"batch_size": key[1], "error": short_error(exc)}
                del meters[key]
    rows.update({key: meter.result() for key, meter in meters.items()})
    return rows


def latency(variant: Variant, batch_size: int, settings: ExportConfig) -> dict[str, Any]:
    """One variant at one batch size on its own (not interleaved): for benchmarks that interleave
    themselves. The hook and `cifar-tune bench` use `measure_latencies`."""
    meter = LatencyMeter(variant, batch_size)
    meter.start(settings.warmup_runs)
    meter.time_round(settings.min_runs, settings.min_duration_s)
    return meter.result()


def end_to_end(variants: list[Variant], data_root: str | None, batch_size: int = 100) -> list[dict[str, Any]]:
    """The original study's number: one pass over the test set *from files*, through a DataLoader
    with PIL transforms, into each variant. Includes data loading; labelled so."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    if data_root is None or not batches_dir(data_root).exists():
        return []
    dataset = TorchvisionCIFAR10(str(batches_dir(data_root).parent), train=False, download=False,
                                 transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    rows = []
    for variant in variants:
        if variant.name not in ("eager_fp32", "torchscript", "onnx_fp32"):
            continue
        start = time.perf_counter()
        for x, _ in DataLoader(dataset, batch_size=batch_size, num_workers=0):
            variant.run(variant.prepare(x))
        variant.sync()
        rows.append({"variant": variant.name, "batch_size": batch_size, "images": len(dataset),
                     "seconds_including_data_loading": time.perf_counter() - start})
    return rows


# --------------------------------------------------------------------------- one checkpoint


def bench_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, test_x: torch.Tensor, test_y: torch.Tensor,
                     calibration_x: torch.Tensor, settings: ExportConfig, device: torch.device | None = None,
                     threads: int | None = None, data_root: str | None = None) -> dict[str, Any]:
    """Export, check and time one checkpoint's best weights; write parity.json and bench.json into
    out_dir and return {"parity": [...], "bench": [...], "end_to_end": [...], "failed": {...}}."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = threads or settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    model, meta = load_best_model(checkpoint_dir)
    channels_last = False
    images = normalize(test_x, channels_last)
    calibration = normalize(calibration_x[: settings.calibration_images], channels_last)
    # Strict fp32 while building and timing: on CUDA, cuDNN's TF32 is on by default, which would run
    # the "fp32" rows (and the parity reference) in TF32. Autocast variants are unaffected.
    with policy("fp32").backend_flags():
        return _bench_variants(checkpoint_dir, out_dir, model, meta, images, test_y, calibration, settings, device,
                               threads, data_root)


def _bench_variants(checkpoint_dir: str | Path, out_dir: Path, model: torch.nn.Module, meta: dict[str, Any],
                    images: torch.Tensor, test_y: torch.Tensor, calibration: torch.Tensor, settings: ExportConfig,
                    device: torch.device, threads: int, data_root: str | None) -> dict[str, Any]:
    variants, failed, skipped = build_variants(model, out_dir, device, calibration, threads, settings.tensorrt,
                                               settings.variants)
    reference = logits_of(variants[0], images)
    parity_rows = [parity(v, images, test_y, reference, settings) for v in variants]
    parity_rows += [{"variant": name, "status": "export_failed", "reason": reason} for name, reason in failed.items()]
    parity_rows += [{"variant": name, "status": "skipped", "reason": reason} for name, reason in skipped.items()]
    status = {row["variant"]: row["status"] for row in parity_rows}
    change = {row["variant"]: (row.get("accuracy_change_pp"), row.get("agreement")) for row in parity_rows}

    env = environment(threads, device)
    latencies = measure_latencies(variants, settings.batch_sizes, settings)
    bench_rows = []
    for variant in variants:
        for batch_size in settings.batch_sizes:
            row = {"variant": variant.name, "variant_precision": variant.precision, "runtime": variant.runtime,
                   "device": str(variant.device), "device_name": device_name(variant.device),
                   "load_s": variant.load_s, "build_s": variant.build_s,
                   "file_mb": variant.file.stat().st_size / 1e6 if variant.file is not None else math.nan,
                   "parity": status[variant.name], "accuracy_change_pp": change[variant.name][0],
                   "agreement": change[variant.name][1], **env, **latencies[(variant.name, batch_size)]}
            bench_rows.append(row)
    e2e = end_to_end(variants, data_root) if settings.end_to_end else []

    summary = {"checkpoint": str(checkpoint_dir), "best_val_acc": meta.get("val_acc"),
               "best_epoch": meta.get("epoch"), "trained_precision": meta.get("precision"),
               "device_name": device_name(device), **env}
    (out_dir / PARITY_FILE).write_text(json.dumps({**summary, "variants": parity_rows}, indent=2))
    (out_dir / BENCH_FILE).write_text(json.dumps({**summary, "results": bench_rows, "end_to_end": e2e}, indent=2))
    return {"parity": parity_rows, "bench": bench_rows, "end_to_end": e2e, "failed": failed}


# --------------------------------------------------------------------------- a path from the CLI


class BenchPathError(CifarTuneError):
    """The path given to `cifar-tune bench` is not a trial or checkpoint directory."""


def locate_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint dir holding best_model.pt, its trial dir or None) for a trial or checkpoint dir."""
    path = Path(path).expanduser().resolve()
    if (path / BEST_FILE).is_file():
        trial = path.parent if (path.parent / TRIAL_PARAMS_FILE).is_file() else None
        return path, trial
    checkpoints = sorted(path.glob(CHECKPOINT_GLOB), key=lambda p: p.name)
    checkpoints = [c for c in checkpoints if (c / BEST_FILE).is_file()]
    if (path / TRIAL_PARAMS_FILE).is_file() and checkpoints:
        return checkpoints[-1], path  # every checkpoint carries the best-so-far weights; the last has the best
    raise BenchPathError(
        f"{path}: not a trial directory (params.json and checkpoint_*/best_model.pt) or a checkpoint "
        "directory (best_model.pt); give e.g. results/<name>/train_cifar_<id>/")


def bench_path(path: str | Path, data_config: DataConfig | None = None, settings: ExportConfig | None = None,
               out_dir: str | Path | None = None) -> dict[str, Any]:
    """`cifar-tune bench PATH`: export, check and time one trial's best weights, standalone.

    The test set comes from `data_config`, or from the experiment's saved config beside the trial."""
    checkpoint, trial = locate_checkpoint(path)
    if data_config is None:
        saved = trial.parent / CONFIG_FILE if trial else None
        if saved is None or not saved.is_file():
            raise BenchPathError(f"{path}: no {CONFIG_FILE} beside the trial to find the data; pass --data-root")
        data_config = load_saved_config(saved).data
    settings = settings or ExportConfig()
    try:
        data = load_data(data_config.model_copy(update={"download": False}))
    except DataError as exc:
        raise BenchPathError(f"bench needs the CIFAR-10 test images, and data.root {data_config.root!r} has none "
                             f"({exc}); pass --data-root /path/to/folder-with-cifar-10-batches-py") from None
    out = Path(out_dir) if out_dir else (trial or checkpoint) / EXPORT_DIR
    return bench_checkpoint(checkpoint, out, data.test_x, data.test_y, data.train_x, settings,
                            threads=settings.threads, data_root=data_config.root)
