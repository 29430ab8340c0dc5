"""`cifar-tune`: the command line, a thin layer over the Python API (cifar_tune.orchestrator,
cifar_tune.analysis, cifar_tune.bench).

Exit codes: 0 success, 1 the experiment ran but some trial failed, 130 interrupted (Ctrl-C) with
trials left to resume, and for a `CifarTuneError` its `exit_code`: 2 for bad input (config, flag,
path, data files) found before any work started.
"""

from __future__ import annotations

import argparse
import math
import sys

from cifar_tune.config import DataConfig, ExportConfig, apply_overrides, describe_schema, load_config, validate_section
from cifar_tune.errors import CifarTuneError
from cifar_tune.names import CONFIG_FILE, ERROR, RESULTS_FILE, UNFINISHED
from cifar_tune.search import plan_experiment
from cifar_tune.storage import Location
from cifar_tune.wandb_setup import resolve_mode

# Commands that run Ray or build exports import their modules when called: `analyze` and `dashboard`
# work from files, on a machine without Ray.

INTERRUPTED = 130  # the shell's code for a SIGINT'ed command


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _add_set_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar-tune",
        description="Ray Tune experiments on AlexNet / CIFAR-10 across training precisions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run an experiment from a YAML config",
                         description="Validate CONFIG, then run its trials on Ray Tune and write "
                                     "<storage_path>/<name>/results.csv.",
                         epilog="Config keys:\n" + describe_schema(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", metavar="CONFIG", help="YAML experiment file, e.g. configs/smoke.yaml")
    _add_set_option(run, "override a config key by dotted path; VALUE is YAML "
                         "(--set train.epochs=5 --set search.precision=[fp32,amp_bf16]); repeatable")
    run.add_argument("--address", help='join this Ray cluster ("auto", "host:port", "ray://host:port"); '
                                       "overrides ray.address")
    run.add_argument("--dry-run", action="store_true",
                     help="validate, print the expanded trials and their resources, and exit without starting Ray")

    resume = sub.add_parser("resume", help="finish an interrupted experiment",
                            description="Restore EXPERIMENT_DIR with Tuner.restore: unfinished trials continue, "
                                        "errored ones retry from their last checkpoint, finished ones stay.")
    resume.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="<storage_path>/<name> of an earlier run")
    resume.add_argument("--address", help="join this Ray cluster instead of the one in the saved config")

    extend = sub.add_parser("extend", help="add seeds to an experiment that already ran",
                            description="Run N new seeds of EXPERIMENT_DIR (the same config otherwise) as "
                                        "<experiment>/extend-<k>/; the analysis and results.csv then include them. "
                                        "Resume an interrupted extension with `cifar-tune resume <experiment>/extend-<k>`.")
    extend.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="<storage_path>/<name> of an earlier run")
    extend.add_argument("--seeds", type=int, default=2, metavar="N",
                        help="new seeds to run (with --until-margin: per round); default 2")
    extend.add_argument("--until-margin", action="store_true",
                        help="keep adding seeds until every comparison's 95%% interval is within the margin")
    extend.add_argument("--max-seeds", type=int, default=20, metavar="M",
                        help="with --until-margin: stop once M seeds in all have run (default 20)")
    extend.add_argument("--margin", type=_positive_float, metavar="PP",
                        help="equivalence margin in points (default: the experiment's analysis.margin_pp)")
    extend.add_argument("--address", help="join this Ray cluster instead of the one in the saved config")

    timing = sub.add_parser("time", help="time each precision's training with the device to itself",
                            description="Isolated training speed: for every precision of CONFIG (or of an experiment "
                                        "folder), a Ray task holding a whole GPU, or every CPU of a node, trains "
                                        "timing.steps steps per round, rounds interleaved across precisions. Writes "
                                        "timing.csv (median img/s, speedup over fp32 with 95%% intervals) and "
                                        "timing_rounds.csv into <storage_path>/<name>/ (or the folder given); the "
                                        "report's speed claims use them.")
    timing.add_argument("config", metavar="CONFIG_OR_EXPERIMENT",
                        help="a YAML experiment file, or an experiment folder (local or cloud URI) that ran")
    _add_set_option(timing, "override a config key, e.g. --set timing.rounds=8 --set timing.steps=50")
    timing.add_argument("--address", help="join this Ray cluster; overrides ray.address")

    bench = sub.add_parser("bench", help="export, check and benchmark one trial's best weights",
                           description="Export the best-validation weights of a trial (or checkpoint) directory "
                                       "to TorchScript and ONNX, check parity on the test set and time every "
                                       "variant; writes parity.json and bench.json into <trial>/export/.")
    bench.add_argument("path", metavar="PATH", help="a trial directory or a checkpoint directory")
    bench.add_argument("--data-root", help="CIFAR-10 folder (default: the experiment's data.root)")
    bench.add_argument("--out", help="output folder (default: <trial dir>/export)")
    _add_set_option(bench, "override an export setting, e.g. --set batch_sizes=[1,64] --set threads=2")

    analyze = sub.add_parser("analyze", help="turn an experiment into tables, statistics and plots",
                             description="Aggregate seeds (mean, 95% CI), compare every precision with fp32 "
                                         "(paired by seed, with an equivalence verdict), and write report.md, "
                                         "PNG plots and CSV tables.")
    analyze.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="<storage_path>/<name> of a run")
    analyze.add_argument("--out", help="output folder (default: EXPERIMENT_DIR/analysis)")
    analyze.add_argument("--wandb-mode", choices=["auto", "online", "offline", "disabled"],
                         help="W&B for the analysis run (default: the experiment's wandb.mode)")
    analyze.add_argument("--margin", type=_positive_float, metavar="PP",
                         help="equivalence margin in test-accuracy points (default: the experiment's analysis.margin_pp)")

    dashboard = sub.add_parser(
        "dashboard", help="build the experiment's W&B workspace and report",
        description="Build a W&B workspace (the experiment's runs grouped by precision: accuracy, speed, "
                    "deployment, system, search) and a report reading like report.md, from the search plan and "
                    "the keys the runs logged. Online: saved. Offline: written as JSON into "
                    "EXPERIMENT_DIR/analysis/dashboard/, with the command that saves them.")
    dashboard.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", nargs="?", help="<storage_path>/<name> of a run")
    dashboard.add_argument("--entity", help="W&B entity (default: wandb.entity, else the key's default entity)")
    dashboard.add_argument("--project", help="W&B project (default: wandb.project)")
    dashboard.add_argument("--wandb-mode", choices=["auto", "online", "offline", "disabled"],
                           help="online saves; anything else only writes the specs (default: wandb.mode)")
    dashboard.add_argument("--save", metavar="DIR", help="save the specs written earlier into DIR (no experiment, "
                                                         "checkpoints or Ray needed)")
    return parser


def _analyze(args: argparse.Namespace) -> int:
    from cifar_tune.analysis.dashboard import make_dashboard
    from cifar_tune.analysis.report import analyze_experiment

    analysis, written = analyze_experiment(args.experiment_dir, args.out, args.wandb_mode, args.margin)
    for line in analysis.conclusions:
        print(line)
    for line in analysis.missing:
        print(f"missing: {line}")
    print(f"\nreport: {written['report.md']}")
    if "wandb_run" in written:
        print(f"W&B analysis run: {written['wandb_run']}")
    if resolve_mode(args.wandb_mode or analysis.experiment.config.wandb.mode) == "online":
        try:
            _, made = make_dashboard(args.experiment_dir, wandb_mode="online", analysis=analysis)
            print(f"W&B workspace: {made['workspace_url']}\nW&B report: {made['report_url']}")
        except Exception as exc:  # the report above is written whatever W&B does
            print(f"W&B: the dashboard was not saved ({type(exc).__name__}: {exc}); `cifar-tune dashboard` retries")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from cifar_tune.analysis.dashboard import load_specs, make_dashboard, save

    if args.save:
        workspace_url, report_url = save(*load_specs(Location.of(args.save), args.entity, args.project))
        print(f"W&B workspace: {workspace_url}\nW&B report: {report_url}")
        return 0
    if not args.experiment_dir:
        raise CifarTuneError("cifar-tune dashboard: give EXPERIMENT_DIR, or --save DIR")
    dashboard, written = make_dashboard(args.experiment_dir, args.entity, args.project, args.wandb_mode)
    for line in dashboard.not_shown:
        print(f"not shown: {line}")
    print(f"keys read from {dashboard.logged.source}")
    for name in ("workspace.json", "report.json"):
        print(f"{name}: {written[name]}")
    if "workspace_url" in written:
        print(f"W&B workspace: {written['workspace_url']}\nW&B report: {written['report_url']}")
    else:
        print(f"not saved (W&B is not online); once online, run:\n  {written['save_command']}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from cifar_tune.bench import bench_path

    settings = validate_section(ExportConfig, apply_overrides({}, args.overrides), "export")
    data = validate_section(DataConfig, {"root": args.data_root, "download": False}, "data") if args.data_root else None
    result = bench_path(args.path, data, settings, args.out)
    for row in result["parity"]:
        extra = (f"accuracy {100 * row['accuracy']:.2f}% ({row['accuracy_change_pp']:+.2f} pp), "
                 f"agreement {100 * row['agreement']:.2f}%" if "accuracy" in row else row.get("reason", ""))
        print(f"{row['variant']:<20} {row['status']:<14} {extra}")
    for row in result["bench"]:
        if "p50_ms" in row:
            tail = ", ".join(f"{name} {row[f'{name}_ms']:.2f} ms" for name in ("p90", "p99")
                             if not math.isnan(row[f"{name}_ms"]))
            ci = ("" if math.isnan(row["p50_ci_low_ms"])
                  else f" (95% CI {row['p50_ci_low_ms']:.2f}-{row['p50_ci_high_ms']:.2f})")
            print(f"{row['variant']:<20} batch {row['batch_size']:>4}: p50 {row['p50_ms']:.2f} ms{ci}, "
                  f"{tail or 'no p90/p99'} from {row['runs']} runs, {row['images_per_s']:.0f} img/s")
    return 0 if not result["failed"] else 1


def _time(args: argparse.Namespace) -> int:
    from cifar_tune.orchestrator.timing import time_experiment

    source = Location.of(args.config)
    folder = source if source.is_file(CONFIG_FILE) else None  # an experiment folder: time it in place
    config = load_config(folder / CONFIG_FILE if folder else args.config, args.overrides)
    if args.address:
        config.ray.address = args.address
    time_experiment(config, folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "time":
            return _time(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "dashboard":
            return _dashboard(args)
        # Imported by the command that needs it: analysis (scipy, matplotlib) costs a second of start-up
        # that `run` does not need.
        from cifar_tune.orchestrator.experiment import resume_experiment, run_experiment
        from cifar_tune.orchestrator.preflight import describe_plan

        if args.command == "extend":
            from cifar_tune.orchestrator.extend import extend_experiment, extend_until_margin
        if args.command == "extend" and args.until_margin:
            for line in extend_until_margin(args.experiment_dir, args.seeds, args.max_seeds, args.address,
                                            args.margin):
                print(line)
            return 0
        if args.command == "extend":
            outcome = extend_experiment(args.experiment_dir, args.seeds, args.address, margin_pp=args.margin)
        elif args.command == "resume":
            outcome = resume_experiment(args.experiment_dir, address=args.address)
        else:
            config = load_config(args.config, args.overrides)
            if args.address:
                config.ray.address = args.address
            if args.dry_run:
                config, plan, notes = plan_experiment(config)
                print(describe_plan(config, plan, notes))
                return 0
            outcome = run_experiment(config)
    except CifarTuneError as exc:
        print(f"cifar-tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"\nresults: {outcome.location / RESULTS_FILE}")
    if (outcome.table["status"] == ERROR).any():
        return 1
    return INTERRUPTED if (outcome.table["status"] == UNFINISHED).any() else 0


if __name__ == "__main__":
    sys.exit(main())
