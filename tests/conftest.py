"""Shared fixtures: small learnable CIFAR-format data written by the tests, a tiny config, one Ray
for the whole session, torch's global flags restored after every test, and a training precision
that runs well on whatever CPU the suite finds itself on."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before torch loads its OpenMP runtime, which reads this once: an OpenMP thread that runs out of
# work sleeps at once instead of spinning for it. The suite runs two test processes on 2 cores, each
# with torch's 2 threads, beside Ray workers and CLI runs; a spinning thread burns the core another
# process is waiting for. Measured on a 2-core AMD EPYC: the same training in two processes at once
# took 12.5 s each with spinning, 4.0 s without (2.15 s alone, 2.6 s alone without). It changes no
# number. Every process the tests start (Ray's workers too) inherits it; set it to ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.machine import unmet  # noqa: E402
from cifar_tune.precision import device_problem  # noqa: E402
from cifar_tune.variants import REGISTRY  # noqa: E402

from cifar_files import write_cifar  # noqa: E402

# CPUs differ: with AVX512-BF16 or AMX, bf16 autocast is native (2x fp32); with only AVX2 it is
# emulated (20x slower). Tests that train one precision use the fast one of this machine. Tests
# that compare two precision arms compare fp32 with amp_bf16 where it is native, and elsewhere with
# tf32, which on a CPU is fp32 math under another name (allowed explicitly): the same analysis code
# runs on every CPU, at fp32 speed.
NATIVE_BF16 = device_problem("amp_bf16", "cpu") is None
TEST_PRECISION = "amp_bf16" if NATIVE_BF16 else "fp32"
SECOND_PRECISION = "amp_bf16" if NATIVE_BF16 else "tf32"
ALLOW_SECOND = {"allow_slow_precision": not NATIVE_BF16}
# The variants a CPU export builds here, but those that compile (torch.compile, AOTInductor): half a
# minute or more each on 2 cores, so only the tests about them (marked slow) build them.
FAST_VARIANTS = [s.name for s in REGISTRY if not s.compiles and not unmet(s, torch.device("cpu"))]
# Tests of orchestration, resume, exports and analysis train a narrow AlexNet (model.width 0.25:
# 0.29 M parameters, not 4.6 M): every layer and code path of the study's network at an eighth
# of its compute and checkpoint bytes. What the full width is claimed to do (learn the tiny set
# in 3 epochs; its checkpoint's size) is tested at width 1.0.
TINY_MODEL = {"width": 0.25}
# Tests that kill or interrupt a trial mid-run need it to run for a while: a pause after every
# epoch (cifar_tune/faults.py) gives them the window without spending CPU.
PAUSE = {"epoch_pause_s": 1.0}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile cifar_tune and the tests' helpers to bytecode once, before anything runs. The suite
    starts hundreds of Python processes (Ray workers, CLI runs, benchmark children) that import
    them; where PYTHONDONTWRITEBYTECODE is set (as on the CI machines) none of them may write the
    bytecode it compiles, so each compiled every module again (about half a second of CPU per
    process here). Python still checks each file's bytecode against its source: an edit is never
    missed."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for folder in (root / "cifar_tune", root / "tests", root / "benchmarks"):
        compileall.compile_dir(folder, quiet=1)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """500 training and 100 test images whose class is their (noisy) colour: learnable in a few steps."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, per_batch=100, n_test=100)
    return root


@pytest.fixture
def tiny_raw(cifar_root: Path, tmp_path: Path) -> dict[str, Any]:
    """A raw (unvalidated) config for a seconds-long experiment on the tiny data."""
    return tiny_config(cifar_root, tmp_path / "results")


def tiny_config(cifar_root: Path, storage: Path) -> dict[str, Any]:
    """tiny_raw's config, for module- and session-scoped fixtures that share one run between tests."""
    return {
        "name": "tiny",
        "storage_path": str(storage),
        "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 192},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.02, "precision": TEST_PRECISION, "eval_batch_size": 200},
        "model": dict(TINY_MODEL),
        "resources": {"cpus_per_trial": 1},
        "export": {"enabled": False},
        "wandb": {"mode": "disabled"},
    }


@pytest.fixture(scope="session")
def ray_for_tests() -> Iterator[None]:
    """One embedded Ray for every in-process experiment of the session (starting one costs
    seconds); `ray_session` uses a Ray that is already up and leaves it running."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _restore_torch_flags() -> Iterator[None]:
    """A Trainer sets process-global torch flags (TF32, cuDNN, determinism); put them back even
    when the test fails, so no test depends on the order they run in."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.get_float32_matmul_precision(),
             torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.deterministic) = saved[:4]
    torch.set_float32_matmul_precision(saved[4])
    torch.use_deterministic_algorithms(saved[5])
    torch.set_num_threads(saved[6])


def inject_faults(monkeypatch: pytest.MonkeyPatch, **faults: int) -> None:
    """Ask the next run or resume for the given faults (cifar_tune/faults.py): the driver reads them."""
    from cifar_tune.faults import ENV

    monkeypatch.setenv(ENV, json.dumps(faults))
