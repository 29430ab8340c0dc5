"""What one trial's export costs, variant by variant: the post-trial hook's share (build and parity;
latency is timed once per run, not per trial) for the first trial of an experiment and for a later
one, which reuses what the first compiled (inductor's on-disk cache, the shared AOTInductor package).

Two checkpoints of the same architecture with different weights go through
`bench_checkpoint(timed=False)` in one process, as a reused export worker would see them, with one
shared package folder. Per variant: seconds to build (`build_s`) and to check parity on the test set
(eager fp32's row reuses the reference pass, counted in the sum); their sums against the whole
export's wall (the rest: loading sessions, the models, the files' checks).

    python benchmarks/export_cost.py --data ../shared/data                         # smoke-shaped: 2,000 test images, 1 thread
    python benchmarks/export_cost.py --data ../shared/data --test-images 10000 --threads 2   # cpu-study-shaped
    python benchmarks/export_cost.py --smoke-test                                  # seconds, generated data, fast variants
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune import bench  # noqa: E402
from cifar_tune.config import DataConfig, ExportConfig, ModelConfig  # noqa: E402
from cifar_tune.data import load_data  # noqa: E402
from cifar_tune.models import build_model, forward_flops_per_image  # noqa: E402
from cifar_tune.storage import Location  # noqa: E402

from common import data_or_smoke, machine_line  # noqa: E402


def export_once(checkpoint: Path, out: Path, data, settings: ExportConfig, threads: int,  # noqa: ANN001
                cache: Location) -> tuple[dict, float, dict[str, float], float]:
    """One untimed export: (its result, wall seconds, parity seconds per variant, the whole parity
    check with the reference pass)."""
    parity_s: dict[str, float] = collections.defaultdict(float)
    whole = [0.0]
    check, checks = bench.parity, bench.check_parity

    def timed_parity(variant, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        start = time.perf_counter()
        row = check(variant, *a, **k)
        parity_s[variant.name] += time.perf_counter() - start
        return row

    def timed_checks(*a, **k):  # noqa: ANN002, ANN003, ANN202
        start = time.perf_counter()
        rows = checks(*a, **k)
        whole[0] += time.perf_counter() - start
        return rows

    bench.parity, bench.check_parity = timed_parity, timed_checks
    try:
        start = time.perf_counter()
        result = bench.bench_checkpoint(checkpoint, out, data.test_x, data.test_y, data.train_x, settings,
                                        device=torch.device("cpu"), threads=threads, timed=False, export_cache=cache)
        return result, time.perf_counter() - start, parity_s, whole[0]
    finally:
        bench.parity, bench.check_parity = check, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--test-images", type=int, default=2000, help="parity's test set (smoke.yaml: 2,000)")
    parser.add_argument("--threads", type=int, default=1, help="the export task's threads (smoke.yaml: 1 CPU)")
    parser.add_argument("--trials", type=int, default=2, help="checkpoints exported one after the other")
    parser.add_argument("--smoke-test", action="store_true", help="tiny generated data, the variants that compile nothing")
    args = parser.parse_args()
    for flag in ("test_images", "threads", "trials"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, not {getattr(args, flag)}")
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    scratch = tempfile.TemporaryDirectory(prefix="export-cost-")
    args.data = data_or_smoke(parser, args, scratch)
    if args.smoke_test:
        args.test_images = 100
    data = load_data(DataConfig(root=args.data, download=False, val_size=100, train_subset=512,
                                test_subset=args.test_images))
    settings = ExportConfig(variants=["eager_fp32", "torchscript", "onnx_fp32", "onnx_int8"] if args.smoke_test else None,
                            calibration_images=256, end_to_end=False)
    flop = forward_flops_per_image()

    print(machine_line())
    print(f"{len(data.test_y)} test images, {args.threads} thread(s); parity passes at "
          f"{flop / 1e6:.1f} MFLOP per image forward\n")
    with scratch:
        cache = Location.of(Path(scratch.name) / "export_cache")
        for trial in range(args.trials):
            checkpoint = Path(scratch.name) / f"trial{trial}"
            checkpoint.mkdir()
            torch.manual_seed(trial)  # other weights, same architecture
            torch.save({"state_dict": build_model(ModelConfig()).state_dict(),
                        "model_config": ModelConfig().model_dump()}, checkpoint / "best_model.pt")
            result, wall, parity_s, whole = export_once(checkpoint, Path(scratch.name) / f"export{trial}", data,
                                                        settings, args.threads, cache)
            builds = {row["variant"]: row["build_s"] for row in result["variants"]}
            print(f"trial {trial + 1} ({'first' if trial == 0 else 'later: reuses the first one compiled'}): "
                  f"{wall:.1f} s in all")
            print("| variant | build s | parity s | parity |")
            print("|---|---|---|---|")
            status = {row["variant"]: row["status"] for row in result["parity"]}
            for name in builds:
                build = builds[name]
                print(f"| {name} | {'' if build != build else f'{build:.1f}'} | {parity_s[name]:.1f} | {status[name]} |")
            total_build = sum(b for b in builds.values() if b == b)
            print(f"| **sum** | {total_build:.1f} | {whole:.1f} with the reference pass | "
                  f"{len(data.test_y) * flop * len(parity_s) / 1e12:.2f} TFLOP of parity |")
            if result["failed"]:
                print(f"failed: {result['failed']}")
            print()


if __name__ == "__main__":
    main()
