"""The cost of cloud storage: the same small experiment with storage_path on local disk and on S3
(a local S3-compatible server, moto's server mode on 127.0.0.1, started here), interleaved round by
round; whole-run wall time side by side, and what is written per epoch per trial.

Every epoch each trial writes one checkpoint folder (state.pt: weights, optimizer, RNG; and
best_model.pt: the best-validation weights), one result row, and Tune snapshots its experiment
state; Tune keeps two checkpoint folders per trial (the best by val_acc and the latest), deleting
older ones. So "written per epoch per trial" is measured as the checkpoint folder's size plus the
experiment state's size over the trials, and "stored" as what is left at the end.

    python benchmarks/storage_cost.py --data ../shared/data --rounds 2
    python benchmarks/storage_cost.py --smoke-test        # seconds, on generated data
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' local S3 server and CIFAR-format writer
from s3_server import client, s3_env, s3_server  # noqa: E402

from cifar_tune.config import validate_config  # noqa: E402
from cifar_tune.orchestrator.experiment import run_experiment  # noqa: E402
from cifar_tune.precision import device_problem  # noqa: E402
from cifar_tune.storage import Location  # noqa: E402

from cifar_files import write_cifar  # noqa: E402
from common import SMOKE_MODEL, machine_line  # noqa: E402

MB = 1e6


def sizes(location: Location) -> dict[str, float]:
    """Bytes stored under the experiment, by kind: checkpoints, Tune's experiment state, the rest."""
    fs, base = location.fs, location.path
    from pyarrow.fs import FileSelector, FileType

    out = {"checkpoints": 0.0, "experiment_state": 0.0, "other": 0.0, "checkpoint_folders": 0.0}
    folders = set()
    for info in fs.get_file_info(FileSelector(base, recursive=True)):
        if info.type != FileType.File:
            continue
        rel = os.path.relpath(info.path, base)
        parts = rel.split("/")
        if len(parts) > 2 and parts[1].startswith("checkpoint_"):
            out["checkpoints"] += info.size
            folders.add((parts[0], parts[1]))
        elif parts[0].startswith("experiment_state"):
            out["experiment_state"] += info.size
        else:
            out["other"] += info.size
    out["checkpoint_folders"] = len(folders)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--smoke-test", action="store_true", help="one quick round on generated data")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="storage-cost-") as folder:  # removed at the end, results too
        scratch = Path(folder)
        if args.smoke_test:
            write_cifar(scratch / "cifar", per_batch=100, n_test=100)
            args.data, args.rounds, args.epochs, args.train_images = str(scratch / "cifar"), 1, 1, 192
        elif not args.data:
            parser.error("--data is required (or --smoke-test)")

        precision = "amp_bf16" if device_problem("amp_bf16", "cpu") is None else "fp32"
        raw = {"data": {"root": args.data, "download": False, "val_size": 100 if args.smoke_test else 1000,
                        "train_subset": args.train_images, "test_subset": 100 if args.smoke_test else 1000},
               "train": {"epochs": args.epochs, "precision": precision, "batch_size": 128},
               "search": {"seed": [0, 1]}, "resources": {"cpus_per_trial": 1},
               **({"model": SMOKE_MODEL} if args.smoke_test else {}),
               "export": {"enabled": False}, "wandb": {"mode": "disabled"}}
        trials = 2
        with s3_server() as endpoint:
            os.environ.update(s3_env(endpoint))  # before Ray starts, so its workers have them too
            client(endpoint).create_bucket(Bucket="storage-cost")
            walls: dict[str, list[float]] = {"local": [], "s3": []}
            stored: dict[str, dict[str, float]] = {}
            for r in range(args.rounds):
                for kind, storage in (("local", str(scratch / "results")), ("s3", "s3://storage-cost/results")):
                    config = validate_config({**raw, "name": f"cost-{r}", "storage_path": storage})
                    start = time.perf_counter()
                    outcome = run_experiment(config, quiet=True)
                    walls[kind].append(time.perf_counter() - start)
                    assert (outcome.table["status"] == "TERMINATED").all(), outcome.table
                    stored[kind] = sizes(outcome.location)
                    print(f"round {r + 1} {kind:>5}: {walls[kind][-1]:.1f} s", flush=True)

        print(f"\n{machine_line()}")
        print(f"{trials} trials x {args.epochs} epochs, {args.train_images} training images, {precision}, "
              f"1 CPU each; {args.rounds} interleaved rounds\n")
        print("| storage | whole run, median (s) | rounds (s) | vs local |")
        print("|---|---|---|---|")
        local = statistics.median(walls["local"])
        for kind in ("local", "s3"):
            median = statistics.median(walls[kind])
            print(f"| {kind} | {median:.1f} | {', '.join(f'{w:.1f}' for w in walls[kind])} | {median / local:.2f}x |")
        s = stored["s3"]
        folder_mb = s["checkpoints"] / s["checkpoint_folders"] / MB
        state_mb = s["experiment_state"] / MB
        print(f"\nper checkpoint folder: {folder_mb:.1f} MB; Tune's experiment state: {state_mb * 1000:.0f} kB")
        print(f"written per epoch per trial: about {folder_mb + state_mb / trials:.1f} MB "
              f"(one checkpoint folder, and a share of the experiment-state snapshot)")
        print(f"stored at the end: {(s['checkpoints'] + s['experiment_state'] + s['other']) / MB:.1f} MB in S3 "
              f"({int(s['checkpoint_folders'])} checkpoint folders for {trials} trials), "
              f"{sum(v for k, v in stored['local'].items() if k != 'checkpoint_folders') / MB:.1f} MB on local disk")


if __name__ == "__main__":
    main()
