"""Parity and latency of a trial's deployment variants: what `cifar-tune bench` and the post-trial
hook run, and what they write (`export/parity.json`, `export/bench.json`).

Parity: every variant's logits on the test set against eager fp32: accuracy, agreement of the
predicted class, max / mean absolute logit difference. fp32 variants must agree on
`fp32_min_agreement` of the images; bf16 / fp16 / int8 ones may lose at most
`max_accuracy_drop_pp` points. Outside that: `parity_failed`, and never the "fastest variant".

Latency comes from cifar_tune.meters (interleaved rounds, p50 with a 95% interval, the memory the
calls needed), provenance from cifar_tune.machine; per variant also the load time and the artifact's
file size. A variant that fails at inference loses its own rows only (`inference_failed`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from cifar_tune.config import DataConfig, ExportConfig, load_saved_config
from cifar_tune.data import MEAN, STD, DataError, batches_dir, load_data, normalize, torchvision_cifar10
from cifar_tune.errors import CifarTuneError, short_error
from cifar_tune.export import Variant, build_variants, load_best_model
from cifar_tune.machine import device_name, environment
from cifar_tune.meters import measure_latencies, recover_after_failure
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


def end_to_end(variants: list[Variant], data_root: str | None, batch_size: int = 100) -> list[dict[str, Any]]:
    """The original study's number: one pass over the test set *from files*, through a DataLoader
    with PIL transforms, into each variant. Includes data loading; labelled so."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    if data_root is None or not batches_dir(data_root).exists():
        return []
    dataset = torchvision_cifar10(batches_dir(data_root).parent, train=False,
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
                     threads: int | None = None, data_root: str | None = None,
                     deadline: float | None = None) -> dict[str, Any]:
    """Export, check and time one checkpoint's best weights; write parity.json and bench.json into
    out_dir and return {"parity": [...], "bench": [...], "end_to_end": [...], "failed": {...}}.
    `deadline` (time.monotonic()): variants that no longer fit before it are skipped, saying so."""
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
                               threads, data_root, deadline)


def _bench_variants(checkpoint_dir: str | Path, out_dir: Path, model: torch.nn.Module, meta: dict[str, Any],
                    images: torch.Tensor, test_y: torch.Tensor, calibration: torch.Tensor, settings: ExportConfig,
                    device: torch.device, threads: int, data_root: str | None,
                    deadline: float | None) -> dict[str, Any]:
    variants, failed, skipped = build_variants(model, out_dir, device, calibration, threads, settings.tensorrt,
                                               settings.variants, deadline)
    reference = logits_of(variants[0], images)
    parity_rows = []
    at_inference: set[str] = set()
    for variant in list(variants):
        # A variant that fails at inference (an engine build, out of memory, a graph replay) loses its
        # own rows only: it is recorded with its error and left out of the timing.
        try:
            parity_rows.append(parity(variant, images, test_y, reference, settings))
        except Exception as exc:
            failed[variant.name] = f"failed at inference: {short_error(exc)}"
            at_inference.add(variant.name)
            variants.remove(variant)
            recover_after_failure(variant.device)
    parity_rows += [{"variant": name, "status": "inference_failed" if name in at_inference else "export_failed",
                     "reason": reason} for name, reason in failed.items()]
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
