"""What Tune's forced experiment snapshots cost a large study: N trivial trials (one result with 30
metrics and a 1 kB checkpoint each, no torch) under `CheckpointConfig(num_to_keep=1)`, which makes
Tune snapshot the whole experiment after every trial checkpoint (cifar-tune's setting until
cifar_tune/orchestrator/retention.py replaced it), beside the same trials with `num_to_keep=None`
(no forced snapshot, cifar-tune's setting now), in one Ray, order alternating.

    python benchmarks/tune_snapshots.py --trials 1000      # minutes on 2 cores
    python benchmarks/tune_snapshots.py --smoke-test       # seconds (CI runs it)

Prints the driver's wall and CPU seconds for each setting and their ratio. Each snapshot holds every
trial (tens of kB each with cifar-tune's metrics), so with num_to_keep=1 the driver's work grows as N^2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

CHECKPOINT_BYTES = 1000


def trainable(config: dict) -> None:
    from ray import tune

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.write(b"x" * CHECKPOINT_BYTES)
        metrics = {f"metric_{i}": float(i + config["seed"]) for i in range(30)}  # about cifar-tune's count
        tune.report({**metrics, "val_acc": 0.5}, checkpoint=tune.Checkpoint.from_directory(folder))


def one_run(trials: int, keep: int | None, storage: str) -> dict:
    from ray import tune

    start, cpu = time.perf_counter(), time.process_time()
    tuner = tune.Tuner(
        trainable, param_space={"seed": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage, name=f"keep-{keep}", verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=keep, checkpoint_score_attribute="val_acc",
                                      checkpoint_score_order="max")))
    grid = tuner.fit()
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "errors": len(grid.errors),
            "state_mb": max(os.path.getsize(os.path.join(storage, f"keep-{keep}", name))
                            for name in os.listdir(os.path.join(storage, f"keep-{keep}"))
                            if name.startswith("experiment_state")) / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each setting, order alternating")
    parser.add_argument("--smoke-test", action="store_true", help="20 trials, one round")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.trials, args.rounds = 20, 1
    if args.trials < 1 or args.rounds < 1:
        parser.error(f"--trials and --rounds must be at least 1, got {args.trials} and {args.rounds}")
    # Tune warns on every forced snapshot that comes sooner than 5 s after the last: here, all of them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    from common import machine_line

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows: dict[str, list[dict]] = {"num_to_keep=1": [], "num_to_keep=None": []}
    try:
        with tempfile.TemporaryDirectory(prefix="tune-snapshots-") as storage:
            for r in range(args.rounds):
                order = [1, None] if r % 2 == 0 else [None, 1]
                for keep in order:
                    rows[f"num_to_keep={keep}"].append(one_run(args.trials, keep, os.path.join(storage, str(r))))
    finally:
        ray.shutdown()
    print(f"# Tune's forced snapshots: {args.trials} trivial trials, {args.rounds} round(s); {machine_line()}")
    print("| setting | driver wall s | driver CPU s | experiment_state MB | errored trials |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        walls = " / ".join(f"{x['wall_s']:.1f}" for x in runs)
        cpus = " / ".join(f"{x['cpu_s']:.1f}" for x in runs)
        print(f"| {name} | {walls} | {cpus} | {runs[-1]['state_mb']:.2f} | {sum(x['errors'] for x in runs)} |")
    forced = sum(x["cpu_s"] for x in rows["num_to_keep=1"])
    free = sum(x["cpu_s"] for x in rows["num_to_keep=None"])
    print(f"driver CPU with forced snapshots: {forced / free:.1f}x without")
    return 0 if all(x["errors"] == 0 for runs in rows.values() for x in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
