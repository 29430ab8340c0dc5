"""What every benchmark records beside its numbers: the machine, the versions, the date."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar_tune.machine import cpu_name

# What every --smoke-test trains: a narrow AlexNet (0.29 M parameters, not 4.6 M). A smoke test
# checks that the script runs and prints its table, not the figures, so it need not pay for them.
SMOKE_MODEL = {"width": 0.25}


def machine_line() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; {datetime.date.today().isoformat()}")


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul, as a yardstick for what this CPU can do right now."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def data_or_smoke(parser: argparse.ArgumentParser, args: argparse.Namespace, scratch: tempfile.TemporaryDirectory) -> str:
    """The CIFAR folder a benchmark reads: `--data`, or under --smoke-test a tiny generated copy
    (100 images per batch file, 100 test images) in `scratch`."""
    if args.smoke_test:
        sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
        from cifar_files import write_cifar

        write_cifar(Path(scratch.name) / "cifar", per_batch=100, n_test=100)
        return str(Path(scratch.name) / "cifar")
    if not args.data:
        parser.error("--data is required (or --smoke-test)")
    return args.data
