"""Orchestration at scale: cifar-tune's own machinery at N trials on K simulated nodes, beside bare
Ray Tune doing the same training on the same cluster, and the theoretical minimum.

    python benchmarks/scale.py --trials 100 --nodes 8 --out /tmp/scale
    python benchmarks/scale.py --smoke-test            # 2 trials on 1 node, about a minute (CI: --sides bare-work,cifar-tune)
    python benchmarks/scale.py --trials 1000 --nodes 8 --sides cifar-tune   # one side (about 10 minutes here)

cifar-tune's side is the real thing: the trainable, the device ledger, the export hook (eager_fp32
and onnx_fp32 with parity, latency timed once), W&B offline, results.csv, then `analyze`. Bare
Tune's side: a function trainable that builds the same Trainer, trains the same epoch, tests, saves
one checkpoint, with no callbacks, under the Tune settings cifar-tune chooses (`reuse_actors`; Tune
keeps every checkpoint, so no forced snapshots of its state). `--sides bare-work` adds bare Tune whose
trials also do cifar-tune's post-trial work themselves (the same export and parity, one W&B offline
run each): what the work costs where a plain Tune user would put it, in the trial's own slot.
What is shrunk, on every side: the data (generated; --images training images, default 1000: 0.4 s
of one core's work on a 2-core AMD EPYC; --images 2500 gives the one-second trials of Ray's own
benchmark; 100 validation, 100 test), one epoch, and model.width 0.125 (73 k parameters instead of
4.6 M: a checkpoint is 1 MB, not 53). The minimum is trials x one trial's work (timed alone in this
process) / parallel slots, the slots being min(logical CPUs of the cluster, this machine's cores):
K nodes here share this machine's cores, which a real cluster would not. Not shown: bandwidth to a
bucket, latency between machines. Prints `overhead X%` (over the minimum) for each side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from ray_cluster import clean_env, free_port, left_by_a_run, node_processes, ray_workers, start_node, stop_node  # noqa: E402

from cifar_files import write_cifar  # noqa: E402

WIDTH = 0.125


def child_env() -> dict[str, str]:
    """A driver's environment: the cluster's token auth found as a user's driver finds it; local
    storage declared shared (the nodes share this machine's disk, as a mounted volume would be)."""
    return clean_env(WANDB_SILENT="true", CIFAR_TUNE_SHARED_STORAGE="1")


def study_config(name: str, storage: Path, data_root: Path, trials: int, address: str | None,
                 images: int = 64) -> dict:
    return {
        "name": name, "storage_path": str(storage),
        "data": {"root": str(data_root), "download": False, "val_size": 100, "train_subset": images},
        "model": {"width": WIDTH},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.02, "precision": "fp32", "eval_batch_size": 200},
        "search": {"seed": list(range(trials))},
        "resources": {"cpus_per_trial": 1},
        "ray": {"address": address, "max_failures": 0},
        "export": {"variants": ["eager_fp32", "onnx_fp32"], "batch_sizes": [1], "warmup_runs": 1, "min_runs": 2,
                   "min_duration_s": 0.0, "rounds": 1, "calibration_images": 16},
        "wandb": {"mode": "offline"},
    }


# --------------------------------------------------------------------------- one side, in a child


class FirstResult:
    """A Tune callback noting when the first and the last trial results arrive (one epoch per
    trial: the last result is when every trial's training is over)."""

    def __new__(cls):  # built lazily: importing Ray here would slow the parent
        from ray.tune import Callback

        class _First(Callback):
            at: float | None = None
            last: float | None = None

            def on_trial_result(self, iteration, trials, trial, result, **info):
                self.last = time.perf_counter()
                if self.at is None:
                    self.at = self.last
        return _First()


def _result_times(first, start: float) -> dict:
    """Seconds from the run's start; `started_at` is on the machine's monotonic clock, which every
    process shares (the parent's census lines up with it)."""
    return {"started_at": start, "first_result_s": first.at - start if first.at else None,
            "last_result_s": first.last - start if first.last else None}


def _usage() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"driver_cpu_s": own.ru_utime + own.ru_stime, "driver_peak_rss_mb": own.ru_maxrss / 1024}


def side_cifar_tune(args: argparse.Namespace) -> dict:
    from cifar_tune.analysis import analyze_experiment
    from cifar_tune.analysis.load import read_records
    from cifar_tune.analysis.trials import results_view, trial_table
    from cifar_tune.config import validate_config
    from cifar_tune.orchestrator.experiment import run_experiment
    from cifar_tune.storage import Location

    config = validate_config(study_config("cifar-tune", args.out, args.data, args.trials, args.address, args.images))
    first = FirstResult()
    start = time.perf_counter()
    outcome = run_experiment(config, callbacks=[first], quiet=True)
    wall = time.perf_counter() - start
    usage = _usage()
    path = Location.of(outcome.path)
    t0 = time.perf_counter()
    table = trial_table(read_records(path), outcome.plan.columns)
    path.write_csv("results.csv", results_view(table, outcome.plan.columns))
    results_csv_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    analysis, _ = analyze_experiment(outcome.path, wandb_mode="disabled")
    analyze_s = time.perf_counter() - t0
    exports = json.loads((Path(outcome.path) / "exports.json").read_text())
    return {"wall_s": wall, **_result_times(first, start), **usage,
            "results_csv_s": results_csv_s, "analyze_s": analyze_s,
            "trials_done": int((table["status"] == "TERMINATED").sum()), "exports": len(exports),
            "folder": str(outcome.path)}


def trial_work(train_cfg, model_cfg, data, folder: str) -> dict:
    """One trial's work, the same on the bare side and in the minimum's unit: build the Trainer,
    train the epoch, test, save its checkpoint into `folder`."""
    from cifar_tune.train import Trainer

    trainer = Trainer(train_cfg, model_cfg, data)
    metrics = trainer.train_epoch()
    metrics.update(trainer.test())
    trainer.save(folder)
    return metrics


def export_work(folder: str, out: str | Path, data, export, cache_dir: str) -> dict:
    """One trial's export, the same in bare-work's trials and in the minimum's unit: the study's
    variants built from the checkpoint in `folder` into `out` and parity-checked, untimed as the
    hook does, with the run's export cache in `cache_dir` (after the first, an export writes its
    weights into the first one's ONNX graph). Returns bench_checkpoint's result."""
    import torch

    from cifar_tune.bench import bench_checkpoint
    from cifar_tune.storage import Location

    return bench_checkpoint(folder, out, data.test_x, data.test_y, data.train_x[: export.calibration_images], export,
                            device=torch.device("cpu"), threads=1, timed=False, export_cache=Location.of(cache_dir))


def _bare_trainable(config: dict, data, export_cache: str | None = None) -> None:
    """Bare Tune's trial: `trial_work`, one report. With `export_cache` (the side "bare-work"), the
    trial also does cifar-tune's post-trial work itself, as a plain Tune user would write it: the same
    export and parity (cifar_tune.bench, with the run's export cache) and one W&B offline run (Ray's
    `setup_wandb`), in its own worker and slot."""
    from ray import tune

    from cifar_tune.config import ModelConfig, TrainConfig

    with tempfile.TemporaryDirectory() as folder:
        metrics = trial_work(TrainConfig.model_validate(config["train"]), ModelConfig.model_validate(config["model"]),
                             data, folder)
        if export_cache:
            _work_after_training(config, data, folder, export_cache, metrics)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _work_after_training(config: dict, data, folder: str, export_cache: str, metrics: dict) -> None:
    import wandb
    from ray import tune
    from ray.air.integrations.wandb import setup_wandb

    from cifar_tune.config import ExportConfig
    from cifar_tune.names import EXPORT_DIR

    trial_dir = Path(tune.get_context().get_trial_dir())
    result = export_work(folder, trial_dir / EXPORT_DIR, data, ExportConfig.model_validate(config["export"]), export_cache)
    metrics["variants_within_parity"] = sum(row.get("status") == "ok" for row in result["parity"])
    # The installed packages listed with one run only, as cifar-tune's logger does (0.2 CPU-s a run).
    # Each run in its trial's folder: runs finishing at once in one shared folder race on its
    # wandb-resume.json (one trial in about 4,000 failed so, in run.finish()).
    run = setup_wandb(config, project="scale", mode="offline", dir=str(trial_dir),
                      settings=wandb.Settings(x_save_requirements=config["train"]["seed"] == 0))
    run.log(metrics)
    run.finish()


def side_bare(args: argparse.Namespace, work: bool = False) -> dict:
    import ray
    from ray import tune

    from cifar_tune.config import validate_config
    from cifar_tune.data import load_data
    from cifar_tune.names import EXPORT_CACHE_DIR
    from cifar_tune.orchestrator.cluster import use_token_auth_if_available

    name = "bare-work" if work else "bare"
    config = validate_config(study_config(name, args.out, args.data, args.trials, args.address, args.images))
    use_token_auth_if_available()  # as `ray.init` of a driver joining a token cluster needs
    # W&B offline in the trials' environment, as a plain Tune user sets it (Ray's setup_wandb asks for
    # an API key otherwise).
    env = {"env_vars": {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}} if work else None
    ray.init(address=args.address, log_to_driver=False, runtime_env=env)
    data = load_data(config.data)
    cache = str(Path(args.out) / name / EXPORT_CACHE_DIR) if work else None
    first = FirstResult()
    base = config.model_dump(mode="json")
    start = time.perf_counter()
    grid = tune.Tuner(
        tune.with_resources(tune.with_parameters(_bare_trainable, data=data, export_cache=cache), {"cpu": 1}),
        param_space={**base, "train": {**base["train"], "seed": tune.grid_search(list(range(args.trials)))}},
        # Tune's settings as cifar-tune sets them (a worker takes the next trial; every checkpoint
        # kept, so no forced experiment-state snapshots): the difference is cifar-tune's machinery.
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(args.out), callbacks=[first]),
    ).fit()
    wall = time.perf_counter() - start
    done = sum(r.error is None for r in grid)
    exported = sum((r.metrics or {}).get("variants_within_parity") == len(config.export.variants) for r in grid)
    ray.shutdown()
    return {"wall_s": wall, **_result_times(first, start), **_usage(), "trials_done": done,
            **({"exports": exported} if work else {}), "folder": str(Path(args.out) / name)}


def one_trial_alone(args: argparse.Namespace) -> dict:
    """One trial's work (build, train the epoch, test, save) in this process, on one thread as a
    1-CPU trial gets: the minimum's unit. Also its export alone (`export_work`, cifar-tune's
    post-trial work), for the minimum with exports."""
    import torch

    from cifar_tune.config import validate_config
    from cifar_tune.data import load_data

    config = validate_config(study_config("alone", args.out, args.data, 1, None, args.images))
    data = load_data(config.data)
    torch.set_num_threads(1)
    times, export_times = [], []
    with tempfile.TemporaryDirectory(prefix="scale-export-cache-") as cache_dir:
        for seed in range(3):
            with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                trial_work(config.train.model_copy(update={"seed": seed}), config.model, data, folder)
                times.append(time.perf_counter() - start)
                start = time.perf_counter()
                export_work(folder, out, data, config.export, cache_dir)
                export_times.append(time.perf_counter() - start)
    # The minimum's units: the fastest trial, and the fastest export of those after the first.
    return {"trial_s": min(times), "export_s": min(export_times[1:]), "first_export_s": export_times[0]}


SIDES = {"cifar-tune": side_cifar_tune, "bare": side_bare, "bare-work": lambda args: side_bare(args, work=True),
         "alone": one_trial_alone}
DRIVERS = ("bare", "bare-work", "cifar-tune")  # the sides that run a study on the cluster, in this order


# --------------------------------------------------------------------------- the parent


def _finished(experiment: Path) -> dict[str, str]:
    """{trial folder: its result.json} of the trials that reported (one epoch: reported = done)."""
    out = {}
    for log in experiment.glob("train_cifar_*/result.json"):
        text = log.read_text()
        if '"test_acc"' in text:
            out[log.parent.name] = text
    return out


def resume_check(args: argparse.Namespace, address: str) -> dict:
    """`cifar-tune run`, interrupted with SIGINT (Ctrl-C) once half the trials have finished, then
    `cifar-tune resume` timed: no finished trial may run again, and results.csv must hold every
    trial once, finished."""
    import pandas as pd
    import yaml

    cli = str(Path(sys.executable).parent / "cifar-tune")
    config = study_config("resumed", args.out, args.data, args.trials, address, args.images)
    config_file = args.out / "resumed.yaml"
    config_file.write_text(yaml.safe_dump(config))
    experiment = args.out / "resumed"
    run = subprocess.Popen([cli, "run", str(config_file)], env=child_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    while run.poll() is None and len(_finished(experiment)) < args.trials // 2:
        time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    run.wait(timeout=600)
    before = _finished(experiment)
    start = time.perf_counter()
    resumed = subprocess.run([cli, "resume", str(experiment)], env=child_env(), capture_output=True, text=True)
    resume_s = time.perf_counter() - start
    if resumed.returncode != 0:
        raise SystemExit(f"resume failed:\n{resumed.stderr[-3000:]}")
    after = _finished(experiment)
    table = pd.read_csv(experiment / "results.csv")
    return {"finished_before": len(before), "resume_s": resume_s,
            "rerun": sum(after.get(name) != text for name, text in before.items()),
            "rows": len(table), "unique_trials": table["trial_id"].nunique(),
            "terminated": int((table["status"] == "TERMINATED").sum())}


# What each Ray process title (or other process of a node's tree) counts as in the CPU census.
KINDS = (("ray::ImplicitFunc", "trial actors"), ("ray::export_trial", "exports"), ("ray::time_trial_export", "latency timing"),
         ("ray::RunLogger", "W&B logger"), ("ray::DeviceLedger", "device ledger"),
         ("ray::IDLE", "workers between tasks"))


def process_kind(title: str) -> str:
    if "/wandb/bin/" in title:  # wandb-core and its system monitor: the W&B logger's own children
        return "W&B logger"
    return next((kind for prefix, kind in KINDS if title.startswith(prefix)), "Ray's daemons")


class RayCensus:
    """Watches this cluster's nodes every half second (the processes whose command line names a
    node's temp dir, and their descendants: Ray workers, wandb-core) and the driver's process:
    Ray workers by title at the peak and at the end (ray::ImplicitFunc, ray::DeviceLedger,
    ray::RunLogger of W&B, ...), and where the CPU went: each process's CPU seconds since the last
    look are put on what it is doing now (a Ray worker's title names its task), by kind, with the
    last moment each kind was busy. It misses at most a process's last half second."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.driver: int | None = None  # the side's process, once started
        self.peak: Counter = Counter()
        self.cpu: Counter = Counter()  # kind -> CPU seconds
        self.busy_until: dict[str, float] = {}  # kind -> seconds after the census began
        self._seen: dict[int, float] = {}  # pid -> its CPU seconds at the last look
        self.began = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._look(count=False)  # what the nodes' daemons used before the side started is not its

    def _processes(self) -> list[tuple[int, int, str, float]]:
        """(pid, ppid, command line, CPU seconds) of the nodes' and the driver's process trees."""
        return node_processes(self.nodes, also=self.driver)

    def now(self, processes: list[tuple[int, int, str, float]] | None = None) -> Counter:
        """Ray workers alive now (or among `processes`), by title; not the driver's own."""
        return ray_workers([row for row in (processes or self._processes()) if row[1] != self.driver])

    def _look(self, count: bool = True) -> list[tuple[int, int, str, float]]:
        """Put each process's CPU since the last look on its kind; returns the processes seen."""
        at = time.perf_counter() - self.began
        processes = self._processes()
        for pid, _, title, cpu in processes:
            delta = cpu - self._seen.get(pid, 0.0)
            self._seen[pid] = cpu
            if count and delta > 0:
                kind = "driver" if pid == self.driver else process_kind(title)
                self.cpu[kind] += delta
                if delta > 0.05:
                    self.busy_until[kind] = at
        return processes

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            counts = self.now(self._look())  # one read of /proc a look: the census runs beside the study
            if sum(counts.values()) > sum(self.peak.values()):
                self.peak = counts

    def __enter__(self) -> RayCensus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_side(side: str, args: argparse.Namespace, address: str | None, nodes: list[str]) -> dict:
    result = Path(args.out) / f"{side}.json"
    command = [sys.executable, __file__, "--side", side, "--trials", str(args.trials), "--out", str(args.out),
               "--data", str(args.data), "--images", str(args.images), "--result", str(result)]
    command += ["--address", address] if address else []
    with RayCensus(nodes) as census:
        child = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        census.driver = child.pid
        stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    time.sleep(2)  # let Ray reap what the driver released
    figures = json.loads(result.read_text())
    figures["ray_processes_peak"] = dict(census.peak)
    figures["ray_processes_after"] = dict(census.now())
    figures["cpu_s_by_kind"] = dict(census.cpu.most_common())
    if "started_at" in figures:  # the census's clock began before the driver's run did
        shift = census.began - figures["started_at"]
        figures["busy_until_s"] = {kind: at + shift for kind, at in census.busy_until.items()}
    if "folder" in figures:
        folder = Path(figures["folder"])
        figures["bytes_per_trial"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / args.trials
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=8, help="simulated Ray nodes on this machine")
    parser.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs each node offers")
    parser.add_argument("--images", type=int, default=1000,
                        help="training images per trial (its one epoch): sets how long a trial works")
    parser.add_argument("--out", type=Path, help="keeps the experiment folders and figures (default: a temp dir)")
    parser.add_argument("--resume-check", action="store_true",
                        help="also interrupt a third run halfway and time `cifar-tune resume`")
    parser.add_argument("--sides", default="bare,cifar-tune",
                        help="which drivers to run, comma-separated (default: bare,cifar-tune; also bare-work: "
                             "bare Tune whose trials export and log to W&B themselves); a side alone prints "
                             "its overhead over the minimum but no ratio to another")
    parser.add_argument("--smoke-test", action="store_true", help="2 short trials on 1 node")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:  # a child: one side, its figures to --result
        args.result.write_text(json.dumps(SIDES[args.side](args)))
        return 0
    if args.smoke_test:
        args.trials, args.nodes, args.images = 2, 1, 64
    chosen = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = [side for side in chosen if side not in DRIVERS]
    if unknown or not chosen:
        parser.error(f"--sides {args.sides!r}: choose from {', '.join(DRIVERS)} (got {unknown or 'nothing'})")
    if args.resume_check and "cifar-tune" not in chosen:
        parser.error("--resume-check resumes cifar-tune's run: --sides must include cifar-tune")
    for flag, value in (("--trials", args.trials), ("--nodes", args.nodes), ("--cpus-per-node", args.cpus_per_node),
                        ("--images", args.images)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    scratch = tempfile.TemporaryDirectory(prefix="scale-")
    args.out = (args.out or Path(scratch.name)).resolve()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty: the experiments would collide with earlier ones")
    args.out.mkdir(parents=True, exist_ok=True)
    args.data = args.out / "data"
    write_cifar(args.data, per_batch=(args.images + 100) // 5 + 1, n_test=100)  # + the 100 validation images

    from common import machine_line

    print(f"# scale: {args.trials} trials, {args.nodes} nodes x {args.cpus_per_node} logical CPUs; {machine_line()}")
    slots = min(args.nodes * args.cpus_per_node, os.cpu_count() or 1)
    alone = run_side("alone", args, None, [])
    nodes = []
    try:
        port = free_port()
        nodes.append(start_node(port, head=True, cpus=args.cpus_per_node))
        for _ in range(args.nodes - 1):
            nodes.append(start_node(port, head=False, cpus=args.cpus_per_node))
        address = f"127.0.0.1:{port}"
        sides = {side: run_side(side, args, address, nodes) for side in DRIVERS if side in chosen}
        resumed = resume_check(args, address) if args.resume_check else None
    finally:
        for node in reversed(nodes):
            stop_node(node)
    minimum = args.trials * alone["trial_s"] / slots
    print(f"one trial alone {alone['trial_s']:.2f} s; minimum {minimum:.1f} s "
          f"({args.trials} x {alone['trial_s']:.2f} s / {slots} slots)")
    with_exports = args.trials * (alone["trial_s"] + alone["export_s"]) / slots
    print(f"one export alone {alone['export_s']:.2f} s (the first, which exports the shared ONNX graph: "
          f"{alone['first_export_s']:.2f} s); minimum with exports {with_exports:.1f} s "
          f"(cifar-tune's side and bare-work's also export each trial)")
    for side, f in sides.items():
        if "exports" in f:  # the sides that also export each trial
            print(f"{side}: overhead {100 * (f['wall_s'] / with_exports - 1):.0f}% over the minimum with exports")
        print(f"{side}: wall {f['wall_s']:.1f} s, overhead {100 * (f['wall_s'] / minimum - 1):.0f}% over the minimum; "
              f"first result after {f['first_result_s']:.1f} s; driver {f['driver_cpu_s']:.1f} CPU s, peak RSS "
              f"{f['driver_peak_rss_mb']:.0f} MB; {f['bytes_per_trial'] / 1024**2:.2f} MB written per trial; "
              f"{f['trials_done']}/{args.trials} trials done")
        left = left_by_a_run(Counter(f["ray_processes_after"]))
        print(f"  Ray processes at the peak: {f['ray_processes_peak']}; left by the run: {left or 'none'}")
        cpu = f["cpu_s_by_kind"]
        print(f"  CPU by kind ({sum(cpu.values()):.0f} CPU s in all; per trial): "
              + ", ".join(f"{kind} {s:.1f} ({s / args.trials:.2f})" for kind, s in cpu.items()))
        busy = ", ".join(f"{kind} {at:.0f} s" for kind, at in sorted(f.get("busy_until_s", {}).items(),
                                                                     key=lambda item: item[1]))
        print(f"  after the run's start: first result {f['first_result_s']:.1f} s, last result "
              f"{f['last_result_s']:.1f} s, run over {f['wall_s']:.1f} s; last busy: {busy}")
    ct = sides.get("cifar-tune")
    for other, what in (("bare", "bare Tune"), ("bare-work", "bare Tune with the work in its trials")):
        if ct and other in sides:
            wall = sides[other]["wall_s"]
            print(f"cifar-tune over {what}: {100 * (ct['wall_s'] / wall - 1):.0f}% "
                  f"({100 * (ct['wall_s'] - wall) / minimum:.0f} points of the minimum)")
    if "bare-work" in sides:
        print(f"bare-work: {sides['bare-work']['exports']} trials exported with every variant within parity")
    if ct:
        print(f"cifar-tune: {ct['exports']} exports; results.csv {ct['results_csv_s']:.2f} s, "
              f"analyze {ct['analyze_s']:.1f} s")
    if resumed:
        print(f"resume after an interrupt with {resumed['finished_before']}/{args.trials} trials finished: "
              f"{resumed['resume_s']:.1f} s; finished trials run again: {resumed['rerun']}; results.csv: "
              f"{resumed['rows']} rows, {resumed['unique_trials']} trials, {resumed['terminated']} finished")
    (args.out / "figures.json").write_text(json.dumps({"alone": alone, "minimum_s": minimum,
                                                       "minimum_with_exports_s": with_exports, **sides,
                                                       "resume": resumed}, indent=1))
    scratch.cleanup()  # empty unless --out was not given
    ok = all(f["trials_done"] == args.trials and f.get("exports", args.trials) == args.trials for f in sides.values())
    ok = ok and (not resumed or (resumed["rerun"] == 0 and resumed["terminated"] == resumed["unique_trials"]
                                 == resumed["rows"] == args.trials))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
