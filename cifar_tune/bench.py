"""Parity and latency of one checkpoint's deployment variants: what `cifar-tune bench` and the
post-trial hook run, and what they write (`export/parity.json`, `export/bench.json`). "bench"
means this everywhere: the module, the command, bench.json and the experiment's bench.csv
(the project's own benchmarks are benchmarks/).

Contract: parity compares every variant's test-set logits with eager fp32's and marks one outside
its tolerance `parity_failed` (never the fastest); latency comes from cifar_tune.meters
(interleaved rounds, p50 with a 95% interval); a variant that fails at inference loses its own
rows only. `bench_checkpoint(timed=False)` checks parity (per trial), `time_export` times one
trial's files. The method, in full: docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cifar_tune.config import DataConfig, ExportConfig, load_saved_config
from cifar_tune.data import MEAN, STD, DataError, batches_dir, load_data, normalize, torchvision_cifar10
from cifar_tune.errors import CifarTuneError, short_error
from cifar_tune.export import Variant, aoti_key, build_variants, load_best_model, onnx_key
from cifar_tune.machine import device_name, environment
from cifar_tune.meters import measure_latencies, median_ratio_interval, recover_after_failure
from cifar_tune.names import (
    AOTI_FILE,
    BENCH_FILE,
    BEST_FILE,
    CHECKPOINT_GLOB,
    CONFIG_FILE,
    EXPORT_DIR,
    ONNX_FILE,
    PARITY_FILE,
    REFERENCE_VARIANT,
    TRIAL_PARAMS_FILE,
)
from cifar_tune.precision import policy

if TYPE_CHECKING:  # only handed in: the GPU box's gpu_check runs bench without pandas or pyarrow
    from cifar_tune.storage import Location

# --------------------------------------------------------------------------- parity


def logits_of(variant: Variant, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([variant.predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def parity(variant: Variant, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor,
           settings: ExportConfig, logits: torch.Tensor | None = None) -> dict[str, Any]:
    """Compare one variant with the eager fp32 logits `reference` on normalized test images
    (`logits`: the variant's own, where already computed)."""
    logits = logits_of(variant, images) if logits is None else logits
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
        "int8_weight_bits": variant.int8_weight_bits,
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


def _loaded(checkpoint_dir: str | Path, device: torch.device | None, threads: int | None,
            settings: ExportConfig) -> tuple[torch.nn.Module, dict[str, Any], torch.device, int]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = threads or settings.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model, meta = load_best_model(checkpoint_dir)
    return model, meta, device, threads


def bench_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, test_x: torch.Tensor, test_y: torch.Tensor,
                     calibration_x: torch.Tensor, settings: ExportConfig, device: torch.device | None = None,
                     threads: int | None = None, data_root: str | None = None,
                     deadline: float | None = None, timed: bool = True,
                     export_cache: Location | None = None) -> dict[str, Any]:
    """Export and check one checkpoint's best weights, and time them unless `timed` is False; write
    parity.json and bench.json into out_dir and return {"parity": [...], "variants": [one row per
    variant], "bench": [per variant x batch size, with latency; empty untimed], "end_to_end": [...],
    "failed": {...}}. Untimed is the post-trial hook's share: latency does not depend on the weights,
    so the hook times one trial's export once, alone (`time_export`). `deadline` (time.monotonic()):
    variants that no longer fit before it are skipped, saying so. `export_cache`: the folder where an
    experiment's trials share what only the first must make (`shared_file`): the compiled
    AOTInductor package, the exported model.onnx graph."""
    model, meta, device, threads = _loaded(checkpoint_dir, device, threads, settings)
    out_dir = Path(out_dir)
    images = normalize(test_x, channels_last=False)
    calibration = normalize(calibration_x[: settings.calibration_images], channels_last=False)
    # Strict fp32 while building and timing: on CUDA, cuDNN's TF32 is on by default, which would run
    # the "fp32" rows (and the parity reference) in TF32. Autocast variants are unaffected.
    # aoti_key asks inductor for the CPU's vector ISA: importing it costs an export worker seconds,
    # so only where the package is among the variants.
    wants_aoti = settings.variants is None or "aoti" in settings.variants
    aoti = aoti_key(device, model) if export_cache is not None and wants_aoti else None
    onnx = onnx_key(model) if export_cache is not None else None
    with (policy("fp32").backend_flags(), shared_file(export_cache, aoti) as aoti_template,
          shared_file(export_cache, onnx) as onnx_template):
        variants, failed, skipped = build_variants(model, out_dir, device, calibration, threads, settings.tensorrt,
                                                   settings.variants, deadline, aoti_template=aoti_template,
                                                   onnx_template=onnx_template)
        if export_cache is not None and aoti_template is None and any(v.file == out_dir / AOTI_FILE for v in variants):
            publish_file(export_cache, aoti, out_dir / AOTI_FILE)
        if export_cache is not None and onnx_template is None and (out_dir / ONNX_FILE).is_file():
            publish_file(export_cache, onnx, out_dir / ONNX_FILE)
        parity_rows = check_parity(variants, failed, skipped, images, test_y, settings)
        env = environment(threads, device)
        status = {row["variant"]: row for row in parity_rows}
        variant_rows = [{"variant": v.name, "variant_precision": v.precision, "runtime": v.runtime,
                         "device": str(v.device), "device_name": device_name(v.device), "load_s": v.load_s,
                         "build_s": v.build_s, "file_mb": v.file.stat().st_size / 1e6 if v.file is not None else math.nan,
                         "parity": status[v.name]["status"], "accuracy_change_pp": status[v.name].get("accuracy_change_pp"),
                         "agreement": status[v.name].get("agreement"), "int8_weight_bits": v.int8_weight_bits,
                         **env} for v in variants]
        timing = (time_variants(variants, settings, threads, device, data_root, "with this checkpoint's export")
                  if timed else {"bench": [], "end_to_end": []})
    by_name = {row["variant"]: row for row in variant_rows}
    bench_rows = [{**by_name[row["variant"]], **row} for row in timing["bench"]]
    summary = {"checkpoint": str(checkpoint_dir), "best_val_acc": meta.get("val_acc"),
               "best_epoch": meta.get("epoch"), "trained_precision": meta.get("precision"),
               "device_name": device_name(device), **env}
    (out_dir / PARITY_FILE).write_text(json.dumps({**summary, "variants": parity_rows}, indent=2))
    (out_dir / BENCH_FILE).write_text(json.dumps({**summary, "variants": variant_rows, "results": bench_rows,
                                                  "end_to_end": timing["end_to_end"]}, indent=2))
    return {"parity": parity_rows, "variants": variant_rows, "bench": bench_rows, "end_to_end": timing["end_to_end"],
            "failed": failed}


@contextlib.contextmanager
def shared_file(cache: Location | None, key: str | None) -> Iterator[Path | None]:
    """The file `key` (an `aoti_key` or `onnx_key`) that another trial of the experiment left in its
    export cache, as a local file while the block runs; None when there is none (or no cache). Made
    again, it would only hold other weights in the same graph, and inductor's own caches cannot help:
    an AOT package's cache key hashes its constants' values (torch/_inductor/codecache.py,
    `_reduce_tensor`)."""
    if cache is None or key is None or not cache.is_file(key):
        yield None
        return
    if cache.is_local:
        yield cache.local_path / key
        return
    with tempfile.TemporaryDirectory(prefix="cifar-tune-shared-") as folder:
        path = Path(folder) / key
        path.write_bytes(cache.read_bytes(key))
        yield path


def publish_file(cache: Location, key: str, made: Path) -> None:
    """Offer a file this trial made to the trials after it, unless one is there already (two at
    once both write: each is whole, either serves; Location writes atomically)."""
    if not cache.is_file(key):
        cache.write_bytes(key, made.read_bytes())


def check_parity(variants: list[Variant], failed: dict[str, str], skipped: dict[str, str], images: torch.Tensor,
                 labels: torch.Tensor, settings: ExportConfig) -> list[dict[str, Any]]:
    """Parity of every built variant against the first (eager fp32), plus a row per variant that
    failed or was skipped. A variant that fails at inference (an engine build, out of memory, a graph
    replay) loses its own rows only: it is recorded with its error and removed from `variants`."""
    reference = logits_of(variants[0], images)
    rows = []
    at_inference: set[str] = set()
    for variant in list(variants):
        try:  # the reference's own row from the pass just made: a second pass would only repeat it
            rows.append(parity(variant, images, labels, reference, settings,
                               reference if variant is variants[0] else None))
        except Exception as exc:
            failed[variant.name] = f"failed at inference: {short_error(exc)}"
            at_inference.add(variant.name)
            variants.remove(variant)
            recover_after_failure(variant.device)
    rows += [{"variant": name, "status": "inference_failed" if name in at_inference else "export_failed",
              "reason": reason} for name, reason in failed.items()]
    rows += [{"variant": name, "status": "skipped", "reason": reason} for name, reason in skipped.items()]
    return rows


def time_variants(variants: list[Variant], settings: ExportConfig, threads: int, device: torch.device,
                  data_root: str | None, method: str) -> dict[str, Any]:
    """Latency of every variant at every batch size, interleaved (cifar_tune.meters), and each one's
    speedup over eager fp32 at the same batch size in the same session: the ratio of the p50s with a
    bootstrap 95% interval. `method` says where it was measured (`latency_method` in every row).
    Returns {"bench": rows per variant x batch size, "end_to_end": [...]}."""
    env = environment(threads, device)
    latencies = measure_latencies(variants, settings.batch_sizes, settings, with_times=True)
    rows = []
    for variant in variants:
        for batch_size in settings.batch_sizes:
            measured = dict(latencies[(variant.name, batch_size)])
            times = measured.pop("times_s", None)
            eager = latencies.get((REFERENCE_VARIANT, batch_size), {}).get("times_s")
            ratio = median_ratio_interval(eager, times) if times and eager else (math.nan, math.nan, math.nan)
            rows.append({"variant": variant.name, "variant_precision": variant.precision, "runtime": variant.runtime,
                         "device": str(variant.device), "device_name": device_name(variant.device), **env,
                         **measured, "speedup": ratio[0], "speedup_ci_low": ratio[1], "speedup_ci_high": ratio[2],
                         "latency_method": method})
    return {"bench": rows, "end_to_end": end_to_end(variants, data_root) if settings.end_to_end else []}


def time_export(checkpoint_dir: str | Path, export_dir: str | Path, settings: ExportConfig, names: list[str],
                method: str, device: torch.device | None = None, threads: int | None = None,
                data_root: str | None = None, export_cache: Location | None = None) -> dict[str, Any]:
    """Time the variants `names` of an export made earlier by `bench_checkpoint(timed=False)`: from
    its files where it has them (nothing is exported again; the torch.compile forms, which have no
    file, compile again from the best weights). What the post-trial hook runs once per experiment,
    on a node to itself. Returns time_variants' {"bench", "end_to_end"} plus {"failed": {...}}."""
    model, _, device, threads = _loaded(checkpoint_dir, device, threads, settings)
    aoti = aoti_key(device, model) if export_cache is not None and "aoti" in names else None
    with policy("fp32").backend_flags(), shared_file(export_cache, aoti) as template:
        variants, failed, _ = build_variants(model, Path(export_dir), device, torch.empty(0, 3, 32, 32), threads,
                                             settings.tensorrt, names, reuse_files=True, aoti_template=template)
        return {**time_variants(variants, settings, threads, device, data_root, method), "failed": failed}


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
