"""W&B offline: trial runs and the analysis run read back without a server; no secret on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cifar_tune import run_experiment
from cifar_tune.analysis.report import analyze_experiment
from cifar_tune.config import validate_config
from cifar_tune.wandb_setup import resolve_mode

from conftest import ALLOW_SECOND, SECOND_PRECISION, TINY_MODEL

FAKE_KEY = "ctfake" + "0123456789abcdef" * 2 + "fedcba98"  # 46 recognizable characters
WANDB = str(Path(sys.executable).parent / "wandb")


def _inspect(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary view, the run record) of an offline run, read by `wandb leet inspect`."""
    summary = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr
    records = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)],
                             capture_output=True, text=True, timeout=120)
    run = next(json.loads(line)["run"] for line in records.stdout.splitlines() if '"type":"run"' in line)
    return json.loads(summary.stdout), run


@pytest.fixture(scope="module")
def logged(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests: None) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", FAKE_KEY)  # present, but the runs are offline: must never reach a file
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        raw = {
            "name": "tracked", "storage_path": str(tmp_path_factory.mktemp("wandb")),
            "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 128},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.02, **ALLOW_SECOND},
            "model": TINY_MODEL,
            "search": {"precision": ["fp32", SECOND_PRECISION], "seed": [0]},
            "resources": {"cpus_per_trial": 1}, "export": {"enabled": False},
            "wandb": {"mode": "offline", "tags": ["ci"]},
            "timing": {"enabled": True, "rounds": 2, "steps": 2, "warmup_steps": 1},
        }
        before = set(_actors())
        path = run_experiment(validate_config(raw), quiet=True).path
        _RUN_ACTORS.extend(set(_actors()) - before)
        analyze_experiment(path, wandb_mode="offline")
    return path


_RUN_ACTORS: list[str] = []  # ids of the actors the `logged` run started


def _actors() -> dict[str, dict[str, Any]]:
    import ray._private.state  # the GCS's actor table (Ray's state API needs a dashboard)

    return ray._private.state.actors()


def test_one_logging_actor_serves_every_trial_and_ends_with_the_run(logged: Path) -> None:
    """Ray Tune's own W&B callback starts two actors per trial; here two trials share one, and no
    actor of the run outlives it (Ray ends a killed actor asynchronously: a few seconds allowed)."""
    classes = Counter(_actors()[a]["ActorClassName"] for a in _RUN_ACTORS)
    assert {c: n for c, n in classes.items() if c not in ("ImplicitFunc", "DeviceLedger")} == {"RunLogger": 1}, classes
    deadline = time.monotonic() + 30
    while {_actors()[a]["State"] for a in _RUN_ACTORS} != {"DEAD"} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {a: _actors()[a]["State"] for a in _RUN_ACTORS if _actors()[a]["State"] != "DEAD"} == {}


def test_the_logging_actors_process_imports_no_torch() -> None:
    """A Ray worker imports the module that defines the class it runs: RunLogger's must not reach
    torch (a second of CPU and hundreds of MB in the logging process of every run, for nothing)."""
    code = "import sys, cifar_tune.run_logger; print(sorted(m for m in ('torch', 'wandb') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["['wandb']"]


def test_trial_runs_are_grouped_tagged_and_summarized(logged: Path) -> None:
    runs = [_inspect(d) for d in sorted((logged / "wandb").glob("offline-run-*"))]
    trials = [(s, r) for s, r in runs if r.get("job_type") == "train"]
    assert len(trials) == 2
    precisions = set()
    for summary, run in trials:
        assert run["run_group"] == "tracked" and run["project"] == "cifar-tune"
        assert "seed:0" in run["tags"] and "ci" in run["tags"]
        precision = next(t.split(":", 1)[1] for t in run["tags"] if t.startswith("precision:"))
        precisions.add(precision)
        assert summary["config"]["train"]["precision"] == precision
        assert {"test_acc", "val_acc", "train_loss", "epoch"} <= set(summary["summary"])
        assert summary["summary"]["epoch"] == 2
    assert precisions == {"fp32", SECOND_PRECISION}
    # the installed packages, the logger's and the same for every trial, listed once per run of the study
    listed = [(d / "files" / "requirements.txt").is_file() for d in sorted((logged / "wandb").glob("offline-run-*"))
              if _inspect(d)[1].get("job_type") == "train"]
    assert sorted(listed) == [False, True], listed


def test_analysis_run_holds_tables_and_headline_numbers(logged: Path) -> None:
    runs = [(_inspect(d), d) for d in sorted((logged / "wandb").glob("offline-run-*"))]
    ((summary, run), run_dir), = [(x, d) for x, d in runs if x[1].get("job_type") == "analysis"]
    assert run["run_group"] == "tracked"
    expected = {f"{SECOND_PRECISION}/test_acc_diff_pp", f"{SECOND_PRECISION}/train_speedup", "fp32/test_acc_mean",
                "fp32/isolated_images_per_s"}
    assert expected <= set(summary["summary"])
    assert summary["summary"]["fp32/isolated_images_per_s"] > 0
    assert summary["summary"]["training_times"].startswith("per-trial training times")  # with the packing said
    assert f"{SECOND_PRECISION} vs fp32" in summary["summary"]["conclusions"]
    files = [p.name for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")]
    for table in ("trials", "aggregate", "comparison", "per_image", "training_speed", "original_study_table"):
        assert any(name.startswith(f"{table}_") for name in files), (table, files)


def test_no_secret_in_any_written_file(logged: Path) -> None:
    checked = 0
    for path in logged.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
            checked += 1
    assert checked > 20  # configs, results, checkpoints, W&B logs, report


def test_auto_mode(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"


# ------------------------------------------------------------------ the dashboard (analysis/dashboard.py)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def _media(keys: set[str]) -> set[str]:
    """A logged table or image shows up flattened in the reader's records ("tables/x._type", ...)."""
    return {k.removesuffix("._type") for k in keys if k.endswith("._type")}


def _keys_in_run_files(folder: Path) -> dict[str, Any]:
    """What the runs logged, read from W&B's files by W&B's own reader: per kind, and each run's name,
    group and top-level config."""
    keys: dict[str, Any] = {"history": set(), "summary": set(), "system": set(), "analysis": set(), "runs": []}
    for run_dir in sorted(folder.glob("offline-run-*")):
        records = _records(run_dir)
        run = next(r["run"] for r in records if r["type"] == "run")
        keys["runs"].append(run)
        history = {k for r in records if r["type"] == "history" for k in r["history"]["item"]}
        summary = {k for r in records if r["type"] == "summary" for k in r["summary"].get("update", {})}
        if run["job_type"] == "analysis":
            keys["analysis"] |= history | summary | _media(history | summary)
        else:
            keys["history"] |= history
            keys["summary"] |= summary
            keys["system"] |= {f"system/{k}" for r in records if r["type"] == "stats" for k in r["stats"]["item"]}
    return keys


def _name(metric: Any) -> str:
    return metric if isinstance(metric, str) else metric.name


def _panel_keys(panel: Any) -> list[tuple[str, str]]:
    """(kind, key) for every key a panel reads."""
    kind = type(panel).__name__
    if kind == "LinePlot":
        return [("history", _name(panel.x))] + [("history", _name(y)) for y in panel.y]
    if kind == "BarPlot":
        return [("summary", _name(m)) for m in panel.metrics]
    if kind == "ScatterPlot":
        return [("config" if type(a).__name__ == "Config" else "summary", _name(a)) for a in (panel.x, panel.y)]
    if kind == "ParallelCoordinatesPlot":
        return [("config" if type(c.metric).__name__ == "Config" else "summary", _name(c.metric)) for c in panel.columns]
    if kind == "WeavePanelSummaryTable":
        return [("analysis", panel.table_name)]
    if kind == "MediaBrowser":
        return [("analysis", k) for k in panel.media_keys]
    raise AssertionError(f"a panel kind this test does not read: {kind}")


@pytest.fixture(scope="module")
def dashboard(logged: Path) -> Any:
    from cifar_tune.analysis.dashboard import build
    from cifar_tune.analysis.load import load_experiment
    from cifar_tune.analysis.summary import analyze

    return build(analyze(load_experiment(logged)), "ent", None)


def test_runs_are_named_and_configured_for_filtering(logged: Path) -> None:
    keys = _keys_in_run_files(logged / "wandb")
    trials = [r for r in keys["runs"] if r["job_type"] == "train"]
    assert sorted(r["display_name"] for r in trials) == sorted(["fp32-s0", f"{SECOND_PRECISION}-s0"])
    for run in trials:
        config = run["config"]["update"]
        assert run["display_name"] == f"{config['precision']}-s{config['seed']}"  # top level, as filters read it
        assert config["precision"] == config["train"]["precision"] and run["run_group"] == "tracked"


def test_every_dashboard_panel_reads_a_key_some_run_logged(logged: Path, dashboard: Any) -> None:
    keys = _keys_in_run_files(logged / "wandb")
    configs = set().union(*(r["config"]["update"] for r in keys["runs"] if r["job_type"] == "train"))
    where = {"history": keys["history"] | keys["system"], "summary": keys["summary"] | keys["analysis"],
             "config": configs, "analysis": keys["analysis"]}
    panels = [p for s in dashboard.workspace.sections for p in s.panels]
    panels += [p for block in dashboard.report.blocks for p in getattr(block, "panels", [])]
    read = [(kind, key) for panel in panels for kind, key in _panel_keys(panel)]
    assert len(read) > 15
    unlogged = [(kind, key) for kind, key in read if key not in where[kind]]
    assert unlogged == []
    runset = dashboard.workspace.runset_settings
    assert [_name(g) for g in runset.groupby] == ["precision"] and "precision" in configs  # a key runs carry
    assert "Group" in str(runset.filters) and "tracked" in str(runset.filters)
    sections = [s.name for s in dashboard.workspace.sections]
    assert sections[:2] == ["Accuracy", "Speed"] and "Search" in sections and "System and energy" in sections
    assert "Deployment" not in sections  # exports were off: said, not drawn empty
    assert any(line.startswith("Inference latency") for line in dashboard.not_shown)
    assert set(runset.group_colors) == {"fp32", SECOND_PRECISION}


def test_a_panel_on_an_unlogged_key_is_caught(logged: Path) -> None:
    """The check above can fail: a dashboard built as if every key were logged names keys no run has."""
    from cifar_tune.analysis.dashboard import Logged, build
    from cifar_tune.analysis.load import load_experiment
    from cifar_tune.analysis.summary import analyze

    everything = Logged(history={"epoch", "val_acc", "train_loss", "epoch_time_s", "train_images_per_s", "energy_j",
                                 "_runtime"}, summary={"test_acc", "training_time_s", "images_per_j"},
                        config={"precision", "seed"}, analysis={"tables/inference_speedups", "plots/latency"})
    made = build(analyze(load_experiment(logged)), "ent", None, logged=everything)
    keys = _keys_in_run_files(logged / "wandb")
    read = {key for s in made.workspace.sections for p in s.panels for _, key in _panel_keys(p)}
    assert read - keys["history"] - keys["summary"] - keys["analysis"] - {"precision", "seed"}


def test_both_specs_round_trip_through_the_librarys_models(dashboard: Any, tmp_path: Path) -> None:
    from cifar_tune.analysis.dashboard import load_specs, write
    from cifar_tune.storage import Location

    write(dashboard, Location.of(tmp_path))
    workspace, report = load_specs(Location.of(tmp_path))
    dump = lambda spec: spec._to_model().spec.model_dump_json(by_alias=True, exclude_none=True)  # noqa: E731
    assert dump(workspace) == dump(dashboard.workspace)
    assert dump(report) == dump(dashboard.report)
    assert report.title == dashboard.report.title and workspace.name == dashboard.workspace.name


def test_offline_dashboard_is_written_and_saved_later_through_wandbs_client(logged: Path, capsys) -> None:
    """Offline, `cifar-tune dashboard` writes both specs and prints the command that saves them; that
    command (Ray hidden) saves through wandb-workspaces' own client to a local GraphQL endpoint, which
    records what the real service would receive. Saving to W&B itself was never run here."""
    from graphql_server import GraphQLRecorder

    from cifar_tune.orchestrator.cli import main

    assert main(["dashboard", "--save", str(logged)]) == 2  # a folder without the specs: said, nothing saved
    assert "no workspace.json or report.json there" in capsys.readouterr().err
    assert main(["dashboard", str(logged), "--wandb-mode", "offline"]) == 0
    out = capsys.readouterr().out
    folder = logged / "analysis" / "dashboard"
    assert (folder / "workspace.json").is_file() and (folder / "report.json").is_file()
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("wandb sync"))
    assert command.endswith(f"cifar-tune dashboard --save {folder}")
    with GraphQLRecorder(entity="ent", project="cifar-tune") as server:
        saved = _hidden_ray(["dashboard", "--save", str(folder), "--entity", "ent"],
                            {"WANDB_BASE_URL": server.url, "WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "online"})
        assert saved.returncode == 0, saved.stderr
        workspace, report = server.views()
    assert (workspace["type"], workspace["entityName"], workspace["projectName"]) == ("project-view", "ent", "cifar-tune")
    spec = json.dumps(workspace["spec"])
    assert "tracked" in spec and "precision" in spec  # the group filter and the grouping
    names = [s["name"] for s in workspace["spec"]["section"]["panelBankConfig"]["sections"]]
    assert names[:2] == ["Accuracy", "Speed"] and "Search" in names
    assert report["type"] == "runs" and report["entityName"] == "ent"
    assert f"{server.url}/ent/cifar-tune?nw=" in json.dumps(report["spec"])  # the workspace, linked
    assert "W&B workspace:" in saved.stdout and "W&B report:" in saved.stdout


def _hidden_ray(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`cifar-tune ARGS` in a fresh interpreter where importing Ray fails."""
    code = ("import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ray': raise ImportError('no Ray here: ' + name)\n"
            "sys.meta_path.insert(0, Hide())\nfrom cifar_tune.orchestrator.cli import main\nsys.exit(main(sys.argv[1:]))")
    import os

    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_the_preview_draws_the_accuracy_section_from_the_run_files(dashboard: Any, tmp_path: Path) -> None:
    from cifar_tune.analysis.dashboard import preview

    path = preview(dashboard.logged, tmp_path / "preview.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert len(dashboard.logged.trained) == 2 and all(run["history"] for run in dashboard.logged.trained)


def test_analyze_saves_the_dashboard_when_wandb_is_online(logged: Path, monkeypatch, capsys) -> None:
    """Online, `cifar-tune analyze` goes on to save the dashboard (here to the local recorder); the
    analysis run itself is left out (it would need the real service)."""
    from graphql_server import GraphQLRecorder

    from cifar_tune.analysis import report as report_mod
    from cifar_tune.orchestrator import cli

    monkeypatch.setattr(report_mod, "publish", lambda *args, **kwargs: None)
    with GraphQLRecorder(entity="ent") as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        monkeypatch.setenv("WANDB_MODE", "online")
        assert cli.main(["analyze", str(logged), "--wandb-mode", "online"]) == 0
        views = server.views()
    assert [v["type"] for v in views] == ["project-view", "runs"] and views[0]["entityName"] == "ent"
    assert f"W&B workspace: {server.url}/ent/cifar-tune?nw=" in capsys.readouterr().out


def test_an_extension_joins_the_group_and_the_dashboard(logged: Path) -> None:
    """Last in this file: it adds seed 1 to the shared experiment. The new runs land in the experiment's
    group (not the extension folder's name), and the dashboard reads them with the old ones."""
    from cifar_tune.analysis.dashboard import make_dashboard
    from cifar_tune.orchestrator.extend import extend_experiment

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        extend_experiment(logged, seeds=1, quiet=True)
    new = [r for r in _keys_in_run_files(logged / "extend-1" / "wandb")["runs"] if r["job_type"] == "train"]
    assert sorted(r["display_name"] for r in new) == sorted(["fp32-s1", f"{SECOND_PRECISION}-s1"])
    assert {r["run_group"] for r in new} == {"tracked"}
    dashboard, _ = make_dashboard(logged, entity="ent", wandb_mode="offline")
    seeds = {run["config"]["seed"] for run in dashboard.logged.trained}
    assert seeds == {0, 1} and "1 extension" in dashboard.logged.source
