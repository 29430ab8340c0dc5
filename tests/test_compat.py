"""Experiments written by earlier versions still analyze and resume: tests/fixtures/experiment-v0.1
(cifar-tune 0.1) and experiment-pre21 (the code before issue 21 moved modules)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cifar_tune.analysis import analyze_experiment, load_experiment
from cifar_tune.orchestrator.experiment import resume_experiment

from cifar_files import write_cifar

FIXTURES = Path(__file__).parent / "fixtures"
# Epochs the finished trial (seed 0) trained in each fixture; the other trial never started.
EPOCHS_DONE = {"experiment-v0.1": 1, "experiment-pre21": 3}
# Where both runs read their data: their saved configs and pickled export callbacks name it.
FIXTURE_DATA = Path("/tmp/cifar-tune-v0.1-fixture-data")


@pytest.fixture(params=sorted(EPOCHS_DONE))
def old_experiment(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    copy = tmp_path / "moved" / request.param  # not where it was written: paths must follow the folder
    shutil.copytree(FIXTURES / request.param, copy)
    return copy


@pytest.fixture
def fixture_data() -> Iterator[Path]:
    made = not FIXTURE_DATA.exists()
    if made:
        write_cifar(FIXTURE_DATA, per_batch=100, n_test=100)
    try:
        yield FIXTURE_DATA
    finally:
        if made:
            shutil.rmtree(FIXTURE_DATA, ignore_errors=True)


def test_old_experiment_analyzes_from_its_files(old_experiment: Path, tmp_path: Path) -> None:
    exp = load_experiment(old_experiment)  # its data folder is long gone: analysis must not need it
    assert sorted(exp.trials["status"]) == ["TERMINATED", "UNFINISHED"]
    finished = exp.trials[exp.trials["status"] == "TERMINATED"].iloc[0]
    assert finished["seed"] == 0 and finished["epochs_done"] == EPOCHS_DONE[old_experiment.name]
    assert 0.5 < finished["test_acc"] <= 1.0  # the tiny data's classes are easy to tell apart
    assert set(exp.bench["variant"]) >= {"eager_fp32", "onnx_fp32", "onnx_int8"}
    analysis, written = analyze_experiment(old_experiment, tmp_path / "report", wandb_mode="disabled")
    report = Path(written["report.md"]).read_text()
    assert "is UNFINISHED after 0 epoch(s)" in report and "onnx_int8" in report


@pytest.mark.usefixtures("ray_for_tests")
def test_old_interrupted_experiment_resumes_where_it_was_moved(old_experiment: Path, fixture_data: Path) -> None:
    before = (next(old_experiment.glob("*seed=0*")) / "result.json").read_text()
    outcome = resume_experiment(old_experiment, quiet=True)
    assert list(outcome.table["status"]) == ["TERMINATED", "TERMINATED"]
    assert (next(old_experiment.glob("*seed=0*")) / "result.json").read_text() == before  # not rerun
    # Everything lands in the moved folder, exports of both runs merged.
    results = pd.read_csv(old_experiment / "results.csv")
    assert list(results["status"]) == ["TERMINATED", "TERMINATED"]
    assert all(str(old_experiment) in p for p in results["path"])
    exports = json.loads((old_experiment / "exports.json").read_text())
    assert sorted(e["seed"] for e in exports.values()) == [0, 1]
    bench = pd.read_csv(old_experiment / "bench.csv")
    assert set(bench["seed"]) == {0, 1}
    # The rest exported as the first trial was (its version's default variants), none added since
    # (a CPU without native bf16 skips eager_bf16: hence at most, not exactly, the same).
    first, rest = (set(bench.loc[bench["seed"] == seed, "variant"]) for seed in (0, 1))
    assert {"eager_fp32", "onnx_fp32", "onnx_int8"} <= rest <= first


def test_old_experiment_gets_a_dashboard_from_what_it_logged(old_experiment: Path) -> None:
    """No W&B run files, runs without top-level keys: the dashboard is built from the trials' results
    and says what it cannot show."""
    from cifar_tune.analysis.dashboard import make_dashboard

    dashboard, written = make_dashboard(old_experiment, entity="ent", wandb_mode="offline")
    assert dashboard.logged.source.startswith("the trials' results")
    assert (old_experiment / "analysis" / "dashboard" / "workspace.json").is_file()
    assert any("system metrics" in line for line in dashboard.not_shown)
    assert any(line.startswith("Isolated training speed") for line in dashboard.not_shown)  # no analysis run
    sections = [s.name for s in dashboard.workspace.sections]
    assert "Accuracy" in sections and "Speed" in sections
    assert written["save_command"].endswith(f"--save {old_experiment / 'analysis' / 'dashboard'}")
