"""A study's wall time with its post-trial exports against the same study without them, side by side.

The same experiment runs twice per round, exports off and on (the order alternating by round, so a
machine that drifts does not favour one side); each wall is the whole `run_experiment` call, Ray's
start and the report included. The ratio is what issue 19's targets are about (smoke-shaped with
the default variants: at most 1.5x; cpu-study-shaped: at most 1.15x).

    python benchmarks/study_wall.py --data ../shared/data                  # smoke-shaped, 1,500 images
    python benchmarks/study_wall.py --data ../shared/data --config configs/cpu-study.yaml --rounds 1
    python benchmarks/study_wall.py --smoke-test                           # seconds, generated data (CI)

Smoke-shaped: configs/smoke.yaml with 1,500 training images and the default deployment variants
(`export.variants: null`: every one this machine runs, torch.compile and AOTInductor included) at
batch sizes 1 and 64; 2 trials at a time on 1 CPU each.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.config import validate_config  # noqa: E402
from cifar_tune.orchestrator.experiment import run_experiment  # noqa: E402

from common import SMOKE_MODEL, data_or_smoke, machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def study(path: Path, data: str, smoke_shaped: bool, smoke_test: bool) -> dict:
    """The experiment's raw config: the file's, pointed at `data`, quiet, W&B off."""
    raw = yaml.safe_load(path.read_text())
    raw["data"] = {**raw.get("data", {}), "root": data, "download": False}
    raw["wandb"] = {"mode": "disabled"}
    if smoke_shaped:
        raw["data"]["train_subset"] = 1500
        raw["export"] = {**raw.get("export", {}), "variants": None, "batch_sizes": [1, 64]}
    if smoke_test:  # seconds: tiny data, one epoch, a narrow model, the fast variants only
        raw["data"].update(train_subset=96, val_size=100, test_subset=100)
        raw["model"] = {**raw.get("model", {}), **SMOKE_MODEL}
        raw["train"] = {**raw.get("train", {}), "epochs": 1, "batch_size": 32}
        raw["search"] = {**raw.get("search", {}), "precision": ["fp32"], "seed": [0]}
        raw["export"].update(variants=["eager_fp32", "torchscript", "onnx_fp32"], calibration_images=32, min_runs=2,
                             min_duration_s=0.0)
    return raw


def timed_run(raw: dict, storage: Path, name: str, exports: bool) -> float:
    """The whole run_experiment call; Tune's progress tables and the workers' logs go to <storage>/<name>.log."""
    config = validate_config({**raw, "name": name, "storage_path": str(storage),
                              "export": {**raw.get("export", {}), "enabled": exports}})
    with open(storage / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        start = time.perf_counter()
        run_experiment(config, quiet=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"),
                        help="the experiment (default: configs/smoke.yaml, smoke-shaped as above)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke-test", action="store_true", help="one quick round on generated data")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file")
    warnings.simplefilter("ignore")
    scratch = tempfile.TemporaryDirectory(prefix="study-wall-")
    args.data = data_or_smoke(parser, args, scratch)
    if args.smoke_test:
        args.rounds = 1
    config_path = Path(args.config)
    smoke_shaped = config_path.resolve() == (ROOT / "configs" / "smoke.yaml").resolve()
    raw = study(config_path, args.data, smoke_shaped, args.smoke_test)

    walls: dict[bool, list[float]] = {False: [], True: []}
    with scratch, tempfile.TemporaryDirectory() as storage:
        for r in range(args.rounds):
            for exports in ((False, True) if r % 2 == 0 else (True, False)):
                walls[exports].append(timed_run(raw, Path(storage), f"wall-{r}-{int(exports)}", exports))
            print(f"round {r + 1}: without exports {walls[False][-1]:.1f} s, with {walls[True][-1]:.1f} s, "
                  f"ratio {walls[True][-1] / walls[False][-1]:.2f}", flush=True)

    without, with_ = statistics.median(walls[False]), statistics.median(walls[True])
    ratios = [w / wo for w, wo in zip(walls[True], walls[False], strict=True)]
    target = 1.5 if smoke_shaped else 1.15
    print(f"\n{machine_line()}")
    print(f"{config_path.name}{' (smoke-shaped)' if smoke_shaped else ''}; {args.rounds} rounds, order alternating, "
          "medians of whole run_experiment calls\n")
    print("| run | wall s | ratio |")
    print("|---|---|---|")
    print(f"| exports off | {without:.1f} | 1.00 |")
    print(f"| exports on | {with_:.1f} | {with_ / without:.2f} |")
    print(f"\nper-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"target: exports on at most {target}x the wall without: {statistics.median(ratios):.2f}x, "
          f"{'met' if statistics.median(ratios) <= target else 'NOT met'}")


if __name__ == "__main__":
    main()
