"""What the post-trial hook's Ray tasks run on a worker (cifar_tune/orchestrator/export_hook.py):
`export_trial`, export and parity of one trial's best weights, and `time_trial_export`, the one
latency timing of a run. Both read the checkpoint from the experiment's storage and write the
export folder there, so they run on any node.

Contract: this module imports only what exporting needs. Ray imports a task's module in every
worker that runs it, and a study starts one export worker per slot once its trials are done:
Ray Tune, Ray Train (which a checkpoint object would bring) and pandas would cost each of them
about 0.8 CPU-s more (benchmarks/RESULTS.md, "Scale"). So the checkpoint travels as a URI, not a
`ray.train.Checkpoint`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import torch

from cifar_tune.bench import bench_checkpoint, time_export
from cifar_tune.config import ExportConfig
from cifar_tune.faults import ExportFault, inject_export_fault
from cifar_tune.storage import Location


@contextmanager
def local_copy(uri: str, prefix: str) -> Iterator[Path]:
    """The folder `uri` on local disk: itself when local, else a temporary copy."""
    where = Location.of(uri)
    if where.is_local:
        yield where.local_path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield where.download(Path(tmp))


def _device() -> torch.device:
    """A GPU where Ray gave this task one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")


def export_trial(checkpoint_uri: str, out_uri: str, data: tuple[torch.Tensor, ...], settings: dict[str, Any],
                 data_root: str | None, cache_uri: str | None = None, fault: ExportFault = None) -> dict[str, Any]:
    """Export and parity for one checkpoint folder (`checkpoint_uri`); the export files go to
    `out_uri` (a folder or a cloud URI), compiled packages the trials share to `cache_uri`.
    (`fault`: the tests', see faults.py.)"""
    out = Location.of(out_uri)
    inject_export_fault(fault, out)
    config = ExportConfig.model_validate(settings)
    threads = config.threads or max(1, int(config.cpus))
    test_x, test_y, calibration_x = data
    with local_copy(checkpoint_uri, "cifar-tune-checkpoint-") as checkpoint_dir, \
            tempfile.TemporaryDirectory(prefix="cifar-tune-export-") as tmp:
        folder = out.local_path if out.is_local else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = bench_checkpoint(checkpoint_dir, folder, test_x, test_y, calibration_x, config, device=_device(),
                                  threads=threads, data_root=data_root, timed=False,
                                  export_cache=Location.of(cache_uri) if cache_uri else None)
        if not out.is_local:
            out.upload(folder)
    return result


def time_trial_export(checkpoint_uri: str, out_uri: str, settings: dict[str, Any], names: list[str],
                      method: str, data_root: str | None, cache_uri: str | None = None) -> dict[str, Any]:
    """On a worker holding a node's CPUs (or a whole GPU): the latency of one exported trial's
    variants `names`, from the files its export wrote to `out_uri`."""
    config = ExportConfig.model_validate(settings)
    threads = config.threads or max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    with local_copy(checkpoint_uri, "cifar-tune-checkpoint-") as checkpoint_dir, \
            local_copy(out_uri, "cifar-tune-time-") as folder:
        return time_export(checkpoint_dir, folder, config, names, method.format(threads=threads), device=_device(),
                           threads=threads, data_root=data_root, export_cache=Location.of(cache_uri) if cache_uri else None)
