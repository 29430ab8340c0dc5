"""An experiment's W&B dashboard, built as code with wandb-workspaces: a saved workspace and a report.

`build(experiment)` makes both from the search plan, the analysis and the keys the runs logged
(read back from W&B's own run files with `wandb leet inspect`; without them, from Tune's results).
A panel whose key no run logged is left out, and named in `Dashboard.not_shown`. `write` keeps
both specs as JSON (the library's own models, so `save_specs` needs neither checkpoints nor Ray);
`save` saves the workspace, links it from the report and saves the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cifar_tune.analysis.load import load_experiment
from cifar_tune.analysis.plots import PRECISION_COLORS
from cifar_tune.analysis.report import COMPARISON_COLUMNS, latency_method, markdown_table
from cifar_tune.analysis.summary import Analysis, analyze
from cifar_tune.analysis.trials import extension_dirs
from cifar_tune.errors import CifarTuneError
from cifar_tune.names import ANALYSIS_DIR
from cifar_tune.storage import Location
from cifar_tune.wandb_setup import resolve_mode, wandb_dir

DASHBOARD_DIR, WORKSPACE_FILE, REPORT_FILE, PREVIEW_FILE = "dashboard", "workspace.json", "report.json", "preview.png"
WORKSPACE_LINK = "https://wandb.ai/cifar-tune-workspace-not-saved-yet"  # replaced by the saved workspace's URL
ENTITY_UNSET = "ENTITY-UNSET"  # W&B's default entity for the key, filled in when saving

# Headline numbers: the runs table's columns after the searched ones, and parallel coordinates' axes.
HEADLINE = ["test_acc", "best_val_acc", "training_time_s", "train_images_per_s"]
# System metrics worth a panel, as W&B names them, first match wins per kind.
SYSTEM_PREFERENCE = [("GPU utilisation (%)", r"system/gpu\.\d+\.gpu$"), ("GPU power (W)", r"system/gpu\.\d+\.powerWatts$"),
                     ("GPU memory allocated (%)", r"system/gpu\.\d+\.memoryAllocated$"),
                     ("CPU utilisation (%)", r"system/cpu$"), ("process memory (MB)", r"system/proc\.memory\.rssMB$"),
                     ("system memory (%)", r"system/memory_percent$")]


@dataclass
class Logged:
    """What an experiment's runs logged, by kind; `source` says where it was read."""

    history: set[str] = field(default_factory=set)  # per-epoch keys of the training runs
    summary: set[str] = field(default_factory=set)  # their summary keys
    config: set[str] = field(default_factory=set)  # top-level config keys of the training runs
    system: set[str] = field(default_factory=set)  # system metrics, "system/<key>"
    analysis: set[str] = field(default_factory=set)  # the analysis run's logged and summary keys
    trained: list[dict[str, Any]] = field(default_factory=list)  # per training run: config, history rows, summary
    runs: int = 0
    source: str = ""


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """One W&B run file's records, read by wandb's own reader."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _public(keys: Any) -> set[str]:
    """Logged keys as a panel names them: no internal ones ("_step"); a table or image (which the
    reader shows flattened, "tables/x._type", "tables/x.path", ...) by its own key."""
    keys = {k.removesuffix("._type") if k.endswith("._type") else k for k in keys if not k.startswith("_")}
    media = {k for k in keys if "._" not in k and any(other.startswith(k + ".") for other in keys)}
    return {k for k in keys if not any(k.startswith(m + ".") for m in media)}


def read_logged(experiment: Any) -> Logged:
    """The keys `experiment`'s runs (those of its group) logged: from the W&B run files on this machine,
    else the trials' own results (no system metrics, no analysis run)."""
    logged = Logged()
    group = experiment.config.wandb.group_for(experiment.path.name)
    folders = [wandb_dir(experiment.path) / "wandb"]  # and each extension's (`extend` runs join the group)
    if experiment.path.is_local:
        folders += [wandb_dir(Location.of(ext)) / "wandb" for ext in extension_dirs(experiment.path.local_path)]
    runs = sorted({d for folder in folders for d in folder.glob("*run-*")})  # one folder if WANDB_DIR is set
    for run_dir in (d for d in runs if d.is_dir() and any(d.glob("*.wandb"))):
        records = _records(run_dir)
        run = next((r["run"] for r in records if r["type"] == "run"), {})
        if run.get("run_group") != group:
            continue
        logged.runs += 1
        rows = [r["history"]["item"] for r in records if r["type"] == "history"]
        summary: dict[str, Any] = {}  # the run's final summary: each update over the one before
        for r in (r for r in records if r["type"] == "summary"):
            summary.update(r["summary"].get("update", {}))
        history = set().union(*rows)
        if run.get("job_type") == "analysis":
            logged.analysis |= _public(history | set(summary))
            continue
        config = run.get("config", {}).get("update", {})
        logged.history |= _public(history) | ({"_runtime"} & history)
        logged.summary |= _public(summary)
        logged.config |= _public(config)
        logged.system |= {f"system/{k}" for r in records if r["type"] == "stats" for k in r["stats"]["item"]}
        logged.trained.append({"config": config, "summary": summary, "history": rows})
    if logged.runs:
        logged.source = f"{logged.runs} W&B run file(s) of group {group!r} under {folders[0]}" + \
            (f" and {len(folders) - 1} extension(s)" if len(folders) > 1 else "")
        return logged
    history = experiment.history
    logged.history = set(history.columns) if not history.empty else set()
    logged.summary = logged.history | set(experiment.trials.columns)
    logged.config = {"precision", "seed"}  # what the report groups by; older runs may lack them at the top
    logged.source = "the trials' results (no W&B run files here: system metrics and the analysis run unknown)"
    return logged


@dataclass
class Dashboard:
    workspace: Any  # wandb_workspaces.workspaces.Workspace
    report: Any  # wandb_workspaces.reports.v2.Report
    not_shown: list[str]  # panels left out, each with the key no run logged
    logged: Logged


class _Panels:
    """Collects panels whose keys were logged; names the others."""

    def __init__(self) -> None:
        self.not_shown: list[str] = []

    def has(self, title: str, keys: list[str], where: set[str]) -> bool:
        absent = [k for k in keys if k not in where]
        if absent:
            self.not_shown.append(f"{title}: no run logged {', '.join(absent)}")
        return not absent


def build(analysis: Analysis, entity: str | None, project: str | None, logged: Logged | None = None) -> Dashboard:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    exp = analysis.experiment
    name, searched = exp.config.wandb.group_for(exp.path.name), [c for c in exp.search_columns
                                                                  if c not in ("precision", "seed")]
    entity, project = entity or exp.config.wandb.entity or ENTITY_UNSET, project or exp.config.wandb.project
    logged = logged or read_logged(exp)
    p = _Panels()
    history, summary, system, analysis_keys = logged.history, logged.summary, logged.system, logged.analysis
    by_precision = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}

    def curve(title: str, key: str, x: str = "epoch") -> list[Any]:
        ok = p.has(title, [x, key], history)
        return [wr.LinePlot(title=title, x=x, y=[key], **by_precision)] if ok else []

    def bars(title: str, key: str) -> list[Any]:
        ok = p.has(title, [key], summary)
        return [wr.BarPlot(title=title, metrics=[key], orientation="v", groupby_aggfunc="mean",
                           groupby_rangefunc="stddev")] if ok else []

    def table(title: str, key: str) -> list[Any]:
        return [wr.WeavePanelSummaryTable(table_name=key)] if p.has(title, [key], analysis_keys) else []

    accuracy = [*curve("Validation accuracy per epoch (seeds pooled: mean, min-max band)", "val_acc"),
                *curve("Training loss per epoch", "train_loss"),
                *bars("Final test accuracy, mean and spread over seeds", "test_acc")]
    if p.has("Final test accuracy per run", ["seed", "test_acc"], logged.config | summary):
        accuracy.append(wr.ScatterPlot(title="Final test accuracy per run (one point per seed)", x=wr.Config("seed"),
                                       y=wr.SummaryMetric("test_acc")))
    speed = [*curve("Epoch time (s)", "epoch_time_s"), *curve("Training images per second", "train_images_per_s"),
             *bars("Training time per run (s)", "training_time_s"),
             *table("Isolated training speed (each precision with the device to itself)", "tables/training_speed")]
    deployment = [*table("Inference latency, speedup, parity and accuracy change per variant and batch size",
                         "tables/inference_speedups")]
    for plot in ("latency", "speedup_vs_accuracy"):
        if p.has(f"plot {plot}", [f"plots/{plot}"], analysis_keys):
            deployment.append(wr.MediaBrowser(media_keys=[f"plots/{plot}"]))
    system_panels = []
    for title, pattern in SYSTEM_PREFERENCE:
        match = sorted(k for k in system if pd.Series([k]).str.match(pattern).iloc[0])
        if match:
            system_panels.append(wr.LinePlot(title=title, x="_runtime", y=[match[0]], **by_precision))
    if not system:
        p.not_shown.append("system metrics: no W&B run file here holds any")
    system_panels += [*curve("Energy per epoch (J)", "energy_j"), *bars("Images per joule", "images_per_j")]

    axes = [c for c in ["precision", "seed", *searched] if c in logged.config]
    p.has("parallel coordinates axes", [c for c in ["precision", "seed", *searched] if c not in axes], logged.config)
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(c)) for c in axes]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in HEADLINE if m in summary]
    search = [wr.ParallelCoordinatesPlot(title="Searched keys against the headline numbers", columns=columns)]

    sections = [(name_, panels) for name_, panels in [("Accuracy", accuracy), ("Speed", speed), ("Deployment", deployment),
                                                      ("System and energy", system_panels), ("Search", search)] if panels]
    group_filter = expr.And(expr.Metric("Group") == name)
    precisions = sorted(set(exp.trials.get("precision", pd.Series(dtype=str)).dropna()))
    workspace = ws.Workspace(
        entity=entity, project=project, name=f"cifar-tune: {name}",
        sections=[ws.Section(name=n, panels=panels, is_open=True) for n, panels in sections],
        settings=ws.WorkspaceSettings(x_axis="epoch" if "epoch" in history else "Step"),
        runset_settings=ws.RunsetSettings(
            filters=group_filter, groupby=[expr.Config("precision")],
            group_colors={pr: PRECISION_COLORS[pr] for pr in precisions if pr in PRECISION_COLORS},
            pinned_columns=[f"config:{c}" for c in axes] + [f"summary:{m}" for m in HEADLINE if m in summary]))

    comparison = analysis.comparison[[c for c in COMPARISON_COLUMNS if c in analysis.comparison]] \
        if not analysis.comparison.empty else analysis.comparison
    # The runset's entity and project are set when saving: serializing them asks the service for the
    # project's id (wandb_workspaces' Runset._to_model), which an offline build cannot.
    runset = wr.Runset(entity="", project="", name=name, filters=group_filter, groupby=["config.precision"])
    plots = [wr.MediaBrowser(media_keys=[f"plots/{k}"]) for k in ("test_acc", "training_time", "val_acc", "latency")
             if f"plots/{k}" in analysis_keys]
    report = wr.Report(
        entity=entity, project=project, title=f"{name}: does mixed precision cost accuracy, and what does it buy?",
        description=f"cifar-tune's analysis of {len(exp.trials)} trial(s), grouped by precision.",
        blocks=[
            wr.H1(text="The question"),
            wr.P(text="Does training AlexNet on CIFAR-10 in each precision change its test accuracy against fp32 "
                      f"(equivalence margin ±{analysis.margin_pp:g} pp), and how much faster does it train and infer?"),
            wr.H2(text="Verdict per precision"),
            wr.UnorderedList(items=list(analysis.conclusions) or ["No comparison possible yet."]),
            wr.MarkdownBlock(text=markdown_table(comparison)),
            wr.H2(text="Plots"),
            wr.PanelGrid(runsets=[runset], panels=[*accuracy[:1], *bars("test accuracy (report)", "test_acc"), *plots]),
            wr.H2(text="Deployment"),
            wr.MarkdownBlock(text=markdown_table(analysis.inference)),
            wr.H2(text="How each figure was measured"),
            wr.UnorderedList(items=[f"Training times: {analysis.training_times}." if analysis.training_times else
                                    "Training times: not recorded.",
                                    f"Inference: {latency_method(exp.bench)}",
                                    f"Keys shown were read from {logged.source}."]),
            wr.P(text=["The runs behind these figures, panel by panel: ",
                       wr.Link(text="the experiment's workspace", url=WORKSPACE_LINK)]),
        ])
    return Dashboard(workspace, report, p.not_shown, logged)


def preview(logged: Logged, path: Path) -> Path | None:
    """The workspace's Accuracy section drawn from the run files alone, as W&B would draw it: val_acc
    per epoch grouped by precision (mean, min-max band over seeds), and test accuracy per run with
    the mean and standard deviation per precision. None when no run file holds them."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [{"precision": run["config"].get("precision"), "seed": run["config"].get("seed"), **item}
            for run in logged.trained for item in run["history"] if "val_acc" in item and "epoch" in item]
    finals = pd.DataFrame([{"precision": run["config"].get("precision"), "test_acc": run["summary"].get("test_acc")}
                           for run in logged.trained]).dropna()
    if not rows or finals.empty:
        return None
    fig = Figure(figsize=(10, 3.8))  # a bare Figure, as plots.py draws: no pyplot, no backend switch
    curves, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for precision, part in pd.DataFrame(rows).groupby("precision"):
        color = PRECISION_COLORS.get(precision)
        per_epoch = part.groupby("epoch")["val_acc"].agg(["mean", "min", "max"]) * 100
        curves.plot(per_epoch.index, per_epoch["mean"], color=color, label=f"{precision} ({part['seed'].nunique()} seeds)")
        curves.fill_between(per_epoch.index, per_epoch["min"], per_epoch["max"], color=color, alpha=0.2)
    curves.set(xlabel="epoch", ylabel="validation accuracy (%)", title="val_acc by precision: mean, min-max band")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.legend()
    names = sorted(finals["precision"].unique())
    for i, precision in enumerate(names):
        values = finals.loc[finals["precision"] == precision, "test_acc"] * 100
        bars.bar(i, values.mean(), yerr=values.std() if len(values) > 1 else None, capsize=4, alpha=0.5,
                 color=PRECISION_COLORS.get(precision))
        bars.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    bars.set_xticks(range(len(names)), names)
    bars.set(ylabel="test accuracy (%)", title="test_acc: mean ± std, a dot per run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write(dashboard: Dashboard, folder: Location) -> dict[str, str]:
    """Both specs as JSON in `folder` (local or cloud): the library's own models (View, ReportViewspec)."""
    models = {WORKSPACE_FILE: dashboard.workspace._to_model(), REPORT_FILE: dashboard.report._to_model()}
    for name, model in models.items():
        folder.write_text(name, model.model_dump_json(by_alias=True, exclude_none=True, indent=1))
    return {name: (folder / name).uri for name in models}


def load_specs(folder: Location, entity: str | None = None, project: str | None = None) -> tuple[Any, Any]:
    """(workspace, report) from `write`'s files, optionally moved to another entity or project."""
    from wandb_workspaces.reports.v2 import Report
    from wandb_workspaces.reports.v2 import internal as report_internal
    from wandb_workspaces.workspaces import Workspace
    from wandb_workspaces.workspaces import internal as workspace_internal

    missing = [name for name in (WORKSPACE_FILE, REPORT_FILE) if not folder.is_file(name)]
    if missing:
        raise CifarTuneError(f"--save {folder}: no {' or '.join(missing)} there; `cifar-tune dashboard EXPERIMENT_DIR` "
                             "writes them into EXPERIMENT_DIR/analysis/dashboard/")
    workspace = Workspace._from_model(workspace_internal.View.model_validate_json(folder.read_text(WORKSPACE_FILE)))
    report = Report._from_model(report_internal.ReportViewspec.model_validate_json(folder.read_text(REPORT_FILE)))
    for spec in (workspace, report):
        spec.entity, spec.project = entity or spec.entity, project or spec.project
    return workspace, report


def _default_entity() -> str:
    import wandb

    return wandb.Api().default_entity


def save(workspace: Any, report: Any) -> tuple[str, str]:
    """Save the workspace, link it from the report, save the report; returns both URLs. Goes through
    wandb-workspaces' own client (W&B's GraphQL API at WANDB_BASE_URL, the key W&B finds itself)."""
    for spec in (workspace, report):
        if spec.entity == ENTITY_UNSET:
            spec.entity = _default_entity()
    for runset in (rs for block in report.blocks if hasattr(block, "runsets") for rs in block.runsets):
        runset.entity, runset.project = report.entity, report.project
    workspace.save()
    for block in report.blocks:
        for part in (block.text if isinstance(getattr(block, "text", None), list) else []):
            if getattr(part, "url", None) == WORKSPACE_LINK:
                part.url = workspace.url
    report.save()
    return workspace.url, report.url


def save_command(folder: Location, wandb_folder: Path) -> str:
    """The one command that saves the written specs, once the offline runs are synced."""
    return f"wandb sync {wandb_folder}/offline-run-* && cifar-tune dashboard --save {folder}"


def make_dashboard(path: str | Path, entity: str | None = None, project: str | None = None,
                   wandb_mode: str | None = None, analysis: Analysis | None = None) -> tuple[Dashboard, dict[str, str]]:
    """The Python API behind `cifar-tune dashboard`: build the dashboard of the experiment at `path`,
    keep both specs in its analysis/dashboard/ folder, and save them to W&B when the mode (default:
    the experiment's wandb.mode) resolves to online. Returns it, and {what: where} (the specs, the
    URLs once saved, else the command that saves them). `analysis`: the experiment's, where the caller
    has just made it (`analyze` does), so it is not made twice."""
    analysis = analysis or analyze(load_experiment(path))
    experiment = analysis.experiment
    dashboard = build(analysis, entity, project)
    folder = experiment.path / ANALYSIS_DIR / DASHBOARD_DIR
    written = write(dashboard, folder)
    if folder.is_local and preview(dashboard.logged, folder.local_path / PREVIEW_FILE):
        written[PREVIEW_FILE] = (folder / PREVIEW_FILE).uri
    if resolve_mode(wandb_mode or experiment.config.wandb.mode) == "online":
        written["workspace_url"], written["report_url"] = save(dashboard.workspace, dashboard.report)
    else:
        written["save_command"] = save_command(folder, wandb_dir(experiment.path) / "wandb")
    return dashboard, written
