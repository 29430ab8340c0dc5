"""Tune's overhead: the same training run bare (Trainer in this process, checkpointing to a temp
folder every epoch, as the trainable does) and as a one-trial Tune experiment, interleaved.

Two numbers for the Tune side: the trial's own wall time (Tune's time_total_s: from the trainable's
start to its last report, which is what the 5% target is about) and the whole `run_experiment`
call (also Ray's start and stop, and reading the data). The bare side is timed from building the
Trainer to its last checkpoint.

    python benchmarks/tune_overhead.py --data ../shared/data --rounds 2
    python benchmarks/tune_overhead.py --smoke-test        # seconds, on generated data (CI runs it)

Precision: amp_bf16 where this CPU runs it natively (the default recipe's), else fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.config import validate_config  # noqa: E402
from cifar_tune.data import load_data  # noqa: E402
from cifar_tune.orchestrator.experiment import run_experiment  # noqa: E402
from cifar_tune.precision import device_problem  # noqa: E402
from cifar_tune.train import Trainer  # noqa: E402

from common import SMOKE_MODEL, machine_line  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from cifar_files import write_cifar  # noqa: E402


def bare_run(config) -> float:
    data = load_data(config.data)
    start = time.perf_counter()
    trainer = Trainer(config.train, config.model, data)
    with tempfile.TemporaryDirectory() as folder:
        while trainer.epoch < config.train.epochs:
            trainer.train_epoch()
            if trainer.epoch == config.train.epochs:
                trainer.test()
            trainer.save(folder)
    return time.perf_counter() - start


def tune_run(config, storage: Path, index: int) -> tuple[float, float]:
    config = config.model_copy(update={"name": f"overhead-{index}", "storage_path": str(storage)})
    start = time.perf_counter()
    outcome = run_experiment(config, quiet=True)
    total = time.perf_counter() - start
    return outcome.result_grid[0].metrics["time_total_s"], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--smoke-test", action="store_true", help="one quick round on generated data")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)  # the trial gets every CPU too (Ray sets its OMP_NUM_THREADS)
    warnings.simplefilter("ignore")
    scratch = tempfile.TemporaryDirectory(prefix="tune-overhead-")
    if args.smoke_test:
        write_cifar(Path(scratch.name) / "cifar", per_batch=100, n_test=100)
        args.data, args.rounds, args.epochs, args.train_images = str(Path(scratch.name) / "cifar"), 1, 1, 192
    elif not args.data:
        parser.error("--data is required (or --smoke-test)")
    held_out = 100 if args.smoke_test else 1000
    precision = "amp_bf16" if device_problem("amp_bf16", "cpu") is None else "fp32"

    config = validate_config({
        "data": {"root": args.data, "download": False, "val_size": held_out, "train_subset": args.train_images,
                 "test_subset": held_out},
        "train": {"epochs": args.epochs, "precision": precision, "batch_size": 128},
        "resources": {"cpus_per_trial": cpus},
        # The recorded runs kept the defaults (exports on, in the whole call's time); the smoke test skips them.
        **({"wandb": {"mode": "disabled"}, "export": {"enabled": False}, "model": SMOKE_MODEL} if args.smoke_test else {}),
    })
    bare, trial, whole = [], [], []
    with scratch, tempfile.TemporaryDirectory() as storage:
        for r in range(args.rounds):
            bare.append(bare_run(config))
            t, w = tune_run(config, Path(storage), r)
            trial.append(t)
            whole.append(w)
            print(f"round {r + 1}: bare {bare[-1]:.1f} s, Tune trial {t:.1f} s, run_experiment {w:.1f} s", flush=True)

    b, t, w = statistics.median(bare), statistics.median(trial), statistics.median(whole)
    print(f"\n{machine_line()}")
    print(f"{args.epochs} epochs x {args.train_images} images, {precision}, {cpus} CPUs, checkpoint every epoch; "
          f"{args.rounds} rounds interleaved, medians\n")
    print("| run | wall s | vs bare |")
    print("|---|---|---|")
    print(f"| bare Trainer loop | {b:.1f} | 1.000 |")
    print(f"| Tune trial (time_total_s) | {t:.1f} | {t / b:.3f} |")
    print(f"| whole run_experiment (Ray start/stop, data read) | {w:.1f} | {w / b:.3f} |")
    print(f"\ntarget: Tune trial at most 5% over bare: {100 * (t / b - 1):+.1f}%, "
          f"{'met' if t / b <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
