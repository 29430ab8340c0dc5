"""Deployment variants: export, fresh-process loading, parity, benchmark files, the post-trial hook."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from scipy import stats

from cifar_tune import export as export_mod
from cifar_tune import machine
from cifar_tune.analysis import analyze, load_experiment
from cifar_tune.analysis.stats import fastest_variants, inference_speedups
from cifar_tune.bench import (
    BENCH_FILE,
    PARITY_FILE,
    BenchPathError,
    bench_checkpoint,
    locate_checkpoint,
    time_export,
)
from cifar_tune.config import ConfigError, ExportConfig, validate_config
from cifar_tune.data import load_data, normalize
from cifar_tune.faults import CRASH_LOG
from cifar_tune.meters import (
    measure_latencies,
    median_interval,
    median_ratio_interval,
    percentile_or_nan,
    uses_cuda_events,
)
from cifar_tune.orchestrator.cli import main
from cifar_tune.storage import Location
from cifar_tune.train import Trainer

from conftest import FAST_VARIANTS, NATIVE_BF16, TEST_PRECISION, TINY_MODEL, inject_faults, tiny_config

QUICK = ExportConfig(batch_sizes=[1, 8], warmup_runs=1, min_runs=3, min_duration_s=0.0, calibration_images=64,
                     end_to_end=False, variants=FAST_VARIANTS)
PARITY_FIELDS = {"variant", "variant_precision", "runtime", "device", "images", "accuracy", "accuracy_change_pp",
                 "agreement", "max_abs_diff", "mean_abs_diff", "tolerance", "status"}
BENCH_FIELDS = {"variant", "variant_precision", "runtime", "device", "parity", "batch_size", "runs", "p50_ms",
                "p50_ci_low_ms", "p50_ci_high_ms", "first_call_ms", "peak_memory_mb", "load_s", "file_mb",
                "cpu_name", "load_average_1m", "build_s", "accuracy_change_pp", "agreement", "p90_ms", "p99_ms", "mean_ms",
                "images_per_s", "device_name", "torch_version", "timer",
                "onnxruntime_version", "onnx_version", "threads", "date"}
# eager_bf16 only where this CPU runs bf16 natively (the export skips it elsewhere, as it would crawl).
CPU_VARIANTS = {"eager_fp32", "eager_channels_last", "torchscript", "onnx_fp32", "onnx_int8"} | (
    {"eager_bf16"} if NATIVE_BF16 else set())


@pytest.fixture(scope="module")
def trained(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A checkpoint of AlexNet trained for two epochs on the tiny learnable set, in a trial-like folder."""
    config = validate_config({
        "data": {"root": str(cifar_root), "download": False, "val_size": 100, "train_subset": 192},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.02, "precision": "fp32"},
        "model": TINY_MODEL,
    })
    data = load_data(config.data)
    trainer = Trainer(config.train, config.model, data)
    trainer.train_epoch()
    trainer.train_epoch()
    trial = tmp_path_factory.mktemp("trial")
    (trial / "params.json").write_text("{}")
    (trial / "checkpoint_000001").mkdir()
    trainer.save(trial / "checkpoint_000001")
    return trial, data


@pytest.fixture(scope="module")
def exported(trained) -> tuple[Path, dict[str, Any]]:
    trial, data = trained
    out = trial / "export"
    result = bench_checkpoint(trial / "checkpoint_000001", out, data.test_x, data.test_y, data.train_x, QUICK,
                              device=torch.device("cpu"), threads=1)
    return out, result


def test_every_cpu_variant_exports_and_meets_parity(exported) -> None:
    out, result = exported
    assert result["failed"] == {}
    assert {row["variant"] for row in result["parity"]} == CPU_VARIANTS
    for row in result["parity"]:
        assert row["status"] == "ok", row
        assert PARITY_FIELDS <= set(row)
        if row["variant_precision"] == "fp32":
            assert row["agreement"] >= 0.999 and row["max_abs_diff"] < 1e-3, row
        # 7-bit weights where this CPU's int8 sums saturate, else 8: what this CPU built, as recorded
        assert row["int8_weight_bits"] == ((7 if machine.int8_sums_saturate() else 8) if row["variant"] == "onnx_int8"
                                           else None), row
    for name in ("model.pt", "model.onnx", "model.int8.onnx"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.data"))  # ONNX in one self-contained file
    for name in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)), full_check=True)


def test_exported_files_load_in_a_fresh_process(exported, trained) -> None:
    out, _ = exported
    trial, _ = trained
    script = f"""
import sys, json, numpy as np, torch, onnxruntime as ort
from cifar_tune.export import load_best_model
model, _ = load_best_model({str(trial / 'checkpoint_000001')!r})
x = torch.randn(5, 3, 32, 32)
want = model(x).detach()
ts = torch.jit.load({str(out / 'model.pt')!r})(x)
session = ort.InferenceSession({str(out / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
got = session.run(None, {{session.get_inputs()[0].name: x.numpy()}})[0]
big = session.run(None, {{session.get_inputs()[0].name: torch.randn(37, 3, 32, 32).numpy()}})[0]
print(json.dumps([float((ts - want).abs().max()), float(np.abs(got - want.numpy()).max()), list(big.shape)]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ts_diff, onnx_diff, dynamic_shape = json.loads(run.stdout.strip().splitlines()[-1])
    assert ts_diff < 1e-4 and onnx_diff < 1e-4
    assert dynamic_shape == [37, 10]  # the batch dimension is dynamic


def test_bench_and_parity_files_have_the_documented_fields(exported) -> None:
    out, result = exported
    bench = json.loads((out / BENCH_FILE).read_text())
    parity = json.loads((out / PARITY_FILE).read_text())
    assert {row["variant"] for row in parity["variants"]} == CPU_VARIANTS
    assert len(bench["results"]) == len(CPU_VARIANTS) * len(QUICK.batch_sizes)
    for row in bench["results"]:
        assert BENCH_FIELDS <= set(row), set(BENCH_FIELDS) - set(row)
        assert row["p50_ms"] > 0 and row["runs"] >= QUICK.min_runs
        # A handful of quick runs supports a median, not its interval (6 runs) nor a p90 (10) or p99 (100).
        for column, needed in (("p50_ci_low_ms", 6), ("p90_ms", 10), ("p99_ms", 100)):
            assert math.isnan(row[column]) == (row["runs"] < needed), (column, row["runs"])
        assert row["first_call_ms"] > 0 and row["load_s"] >= 0 and not math.isnan(row["peak_memory_mb"])
        # A file-based variant names its artifact's size; an eager one has no file.
        expected_file = {"torchscript": "model.pt", "onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx"}
        if row["variant"] in expected_file:
            assert row["file_mb"] == pytest.approx((out / expected_file[row["variant"]]).stat().st_size / 1e6)
        else:
            assert math.isnan(row["file_mb"])
        assert row["threads"] == 1 and row["runtime"] in ("torch", "CPUExecutionProvider")
        assert row["timer"] == "wall_clock"  # CUDA events only for torch variants on a GPU


def test_a_failing_export_is_recorded_and_the_rest_still_run(trained, tmp_path: Path, monkeypatch) -> None:
    trial, data = trained

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(export_mod, "save_onnx", broken)
    result = bench_checkpoint(trial / "checkpoint_000001", tmp_path, data.test_x, data.test_y, data.train_x,
                              QUICK, device=torch.device("cpu"), threads=1)
    assert "simulated exporter crash" in result["failed"]["onnx_fp32"]
    statuses = {row["variant"]: row["status"] for row in result["parity"]}
    assert statuses["onnx_fp32"] == "export_failed" and statuses["torchscript"] == "ok"


def test_bench_without_test_images_names_the_flag(trained, tmp_path: Path, capsys) -> None:
    trial, _ = trained
    experiment = tmp_path / "exp"
    (experiment / "train_cifar_x").mkdir(parents=True)
    (experiment / "train_cifar_x" / "params.json").write_text("{}")
    (experiment / "train_cifar_x" / "checkpoint_000001").symlink_to(trial / "checkpoint_000001")
    (experiment / "cifar_tune_config.yaml").write_text(f"data:\n  root: {tmp_path / 'gone'}\n  download: false\n")
    assert main(["bench", str(experiment / "train_cifar_x")]) == 2
    err = capsys.readouterr().err
    assert "bench needs the CIFAR-10 test images" in err and "--data-root" in err and "Traceback" not in err


def test_parity_failure_is_marked(trained) -> None:
    from cifar_tune.bench import logits_of, parity
    from cifar_tune.export import EagerVariant, load_best_model

    trial, data = trained
    model, _ = load_best_model(trial / "checkpoint_000001")
    images = normalize(data.test_x)
    reference = logits_of(EagerVariant("eager_fp32", model, torch.device("cpu")), images)
    other = EagerVariant("eager_fp32", export_mod.AlexNet().eval(), torch.device("cpu"))  # untrained weights
    row = parity(other, images, data.test_y, reference, QUICK)
    assert row["status"] == "parity_failed" and row["agreement"] < 0.999


def test_locate_checkpoint(trained, tmp_path: Path) -> None:
    trial, _ = trained
    assert locate_checkpoint(trial) == (trial / "checkpoint_000001", trial)
    assert locate_checkpoint(trial / "checkpoint_000001") == (trial / "checkpoint_000001", trial)
    with pytest.raises(BenchPathError, match="not a trial directory"):
        locate_checkpoint(tmp_path)


def test_fastest_variants_table() -> None:
    rows = []
    for precision, speed in (("fp32", 1.0), ("amp_bf16", 2.0)):
        for batch, eager, onnx_ms, int8_ms in ((1, 4.0, 2.0, 1.0), (512, 800.0, 700.0, 300.0)):
            for variant, ms, parity in (("eager_fp32", eager, "ok"), ("onnx_fp32", onnx_ms, "ok"),
                                        ("onnx_int8", int8_ms / speed, "ok" if precision == "fp32" else "parity_failed")):
                rows.append({"trial_id": precision, "precision": precision, "variant": variant, "batch_size": batch,
                             "p50_ms": ms, "parity": parity})
    table = fastest_variants(pd.DataFrame(rows)).set_index("precision")
    assert table.loc["fp32", "fastest, batch 1 (1)"] == "onnx_int8" and table.loc["fp32", "speedup, batch 1"] == 4.0
    # A variant that failed parity is never the fastest.
    assert table.loc["amp_bf16", "fastest, largest batch (512)"] == "onnx_fp32"
    assert table.loc["amp_bf16", "speedup, largest batch"] == pytest.approx(800 / 700)


def test_end_of_run_summary_and_report_use_one_speedup() -> None:
    """Two trials whose eager latencies differ: a median of latencies and a mean of per-trial
    ratios disagree here, and both the summary and the report must give the report's number."""
    rows = []
    for trial, eager, onnx_ms in (("a", 4.0, 2.0), ("b", 10.0, 2.5)):
        rows += [{"trial_id": trial, "precision": "fp32", "variant": "eager_fp32", "batch_size": 1, "p50_ms": eager,
                  "parity": "ok"},
                 {"trial_id": trial, "precision": "fp32", "variant": "onnx_fp32", "batch_size": 1, "p50_ms": onnx_ms,
                  "parity": "ok"}]
    bench = pd.DataFrame(rows)
    report = inference_speedups(bench).set_index("variant").loc["onnx_fp32", "speedup"]
    assert report == pytest.approx(math.sqrt(2.0 * 4.0))  # geometric mean of the per-trial ratios 2x and 4x
    assert fastest_variants(bench).loc[0, "speedup, batch 1"] == pytest.approx(report)


HOOK_EXPORT = {**QUICK.model_dump(), "enabled": True, "cpus": 1, "timeout_s": 600}


@pytest.fixture(scope="module")
def hook_run(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory, ray_for_tests) -> Any:
    """Four 1-CPU trials on a 2-CPU Ray, so when the first exports launch, trials hold every CPU;
    the export of seed 1 raises, the export of seed 3 kills its worker (each attempt)."""
    from cifar_tune import run_experiment

    raw = {**tiny_config(cifar_root, tmp_path_factory.mktemp("hook") / "results"),
           "search": {"seed": [0, 1, 2, 3]}, "export": HOOK_EXPORT}
    with pytest.MonkeyPatch.context() as mp:
        inject_faults(mp, fail_export_seed=1, crash_export_seed=3)
        return run_experiment(validate_config(raw), quiet=True)


def test_hook_exports_each_trial_and_survives_a_failing_one(hook_run, capsys) -> None:
    outcome, quick = hook_run, HOOK_EXPORT
    assert list(outcome.table["status"]) == ["TERMINATED"] * 4  # the experiment is unaffected

    exports = json.loads((outcome.path / "exports.json").read_text())
    by_seed = {entry["seed"]: entry for entry in exports.values()}
    assert {seed: e["status"] for seed, e in by_seed.items()} == {0: "ok", 1: "failed", 2: "ok", 3: "failed"}
    assert "injected" in by_seed[1]["reason"]

    bench = pd.read_csv(outcome.path / "bench.csv")
    assert bench.equals(outcome.bench)
    assert set(bench["seed"]) == {0, 2} and set(bench["variant"]) == CPU_VARIANTS
    assert (bench["precision"] == TEST_PRECISION).all()
    # fp32 forms must agree; bf16 / int8 may miss the 1-point rule on a 100-image test set (1 image = 1 pp)
    assert (bench.loc[bench["variant_precision"] == "fp32", "parity"] == "ok").all()
    assert set(bench["parity"]) <= {"ok", "parity_failed"}
    int8 = bench["variant"] == "onnx_int8"  # each trial's own INT8 file's range (this CPU built both)
    assert (bench.loc[int8, "int8_weight_bits"] == (7 if machine.int8_sums_saturate() else 8)).all()
    assert bench.loc[~int8, "int8_weight_bits"].isna().all()
    for _, row in outcome.table.iterrows():
        has_export = (Path(row["path"]) / "export" / "bench.json").is_file()
        assert has_export == (row["seed"] in (0, 2))
        if has_export:  # each trial's export checks parity and times nothing
            per_trial = json.loads((Path(row["path"]) / "export" / "bench.json").read_text())
            assert per_trial["results"] == [] and {v["variant"] for v in per_trial["variants"]} == CPU_VARIANTS
    # Latency: timed once, on the first exported trial's files, alone; every trial's rows carry it.
    assert len(bench) == 2 * len(CPU_VARIANTS) * len(quick["batch_sizes"]) and bench["p50_ms"].notna().all()
    assert (bench.groupby(["variant", "batch_size"])["p50_ms"].nunique() == 1).all()
    first = min(by_seed[0]["trial_id"], by_seed[2]["trial_id"])
    assert bench["latency_method"].nunique() == 1
    method = bench["latency_method"].iloc[0]
    assert f"trial {first}'s export" in method and "on a node to itself (2 CPUs reserved, 2 inference threads)" in method
    assert (bench.loc[bench["variant"] == "eager_fp32", "speedup"] == 1.0).all()
    assert (bench["threads"] == 2).all()  # the timing's threads: the reserved CPUs, as export.threads null says
    missing = analyze(load_experiment(outcome.path)).missing  # the report says which export failed, and why
    assert any(m.startswith("2 trial(s) without export results") and "seed 1: failed" in m and "injected" in m
               for m in missing), missing

    # The standalone command on one of these trials; and a clear error on a path that is not one.
    trial = outcome.table.loc[outcome.table["seed"] == 0, "path"].item()
    capsys.readouterr()
    code = main(["bench", trial, "--out", str(outcome.path / "standalone"), "--set", "batch_sizes=[2]",
                 "--set", "min_runs=2", "--set", "min_duration_s=0", "--set", "end_to_end=false",
                 "--set", "calibration_images=64", "--set", f"variants={FAST_VARIANTS}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnx_int8" in out and "batch    2: p50" in out
    assert (outcome.path / "standalone" / "bench.json").is_file()
    assert main(["bench", str(outcome.path)]) == 2
    assert "not a trial directory" in capsys.readouterr().err


def test_resumed_experiment_exports_the_rest_and_keeps_earlier_exports(tiny_raw, ray_for_tests, monkeypatch) -> None:
    from cifar_tune import resume_experiment, run_experiment

    # Two variants without ONNX's exporter (seconds per trial): what is tested is the merge, not the variants.
    quick = {**QUICK.model_dump(), "enabled": True, "batch_sizes": [2], "variants": ["eager_fp32", "torchscript"]}
    # epochs=2 finishes (and is exported); epochs=3 fails after epoch 2 and is finished by resume.
    inject_faults(monkeypatch, fail_at_epoch=2)
    raw = {**tiny_raw, "search": {"epochs": [2, 3]}, "export": quick}
    first = run_experiment(validate_config(raw), quiet=True)
    assert sorted(first.table["status"]) == ["ERROR", "TERMINATED"]
    assert set(first.bench["epochs"]) == {2}

    resumed = resume_experiment(first.path, quiet=True)
    assert list(resumed.table["status"]) == ["TERMINATED", "TERMINATED"]
    assert set(resumed.bench["epochs"]) == {2, 3}
    exports = json.loads((resumed.path / "exports.json").read_text())
    assert sorted(e["status"] for e in exports.values()) == ["ok", "ok"]


def test_an_export_whose_worker_dies_is_retried_once_then_recorded(hook_run) -> None:
    outcome = hook_run
    exports = {e["seed"]: e for e in json.loads((outcome.path / "exports.json").read_text()).values()}
    assert exports[3]["status"] == "failed"
    assert "died" in exports[3]["reason"].lower() or "crash" in exports[3]["reason"].lower(), exports[3]["reason"]
    crashed = outcome.table.loc[outcome.table["seed"] == 3, "path"].item()
    attempts = (Path(crashed) / "export" / CRASH_LOG).read_text().split()
    assert len(attempts) == 2 and len(set(attempts)) == 2  # the first try and one retry, each in its own worker


def test_timing_an_export_reuses_its_files(exported, trained, monkeypatch) -> None:
    """What the hook times once per run: the files the export made, loaded, not made again."""
    out, result = exported
    trial, _ = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_saving(*args, **kwargs):
        raise AssertionError("an export file was made again")

    for saver in ("save_torchscript", "save_onnx", "save_onnx_fp16", "save_onnx_int8", "save_aoti"):
        monkeypatch.setattr(export_mod, saver, no_saving)
    names = [row["variant"] for row in result["variants"]]
    timed = time_export(trial / "checkpoint_000001", out, QUICK, names, "method {threads}", device=torch.device("cpu"),
                        threads=1)
    assert timed["failed"] == {}
    assert {(row["variant"], row["batch_size"]) for row in timed["bench"]} == {
        (v, b) for v in CPU_VARIANTS for b in QUICK.batch_sizes}
    assert all(row["p50_ms"] > 0 and row["latency_method"] == "method {threads}" for row in timed["bench"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_bench_rows_take_the_runs_one_timing() -> None:
    """bench.csv: every trial's per-variant rows times the batch sizes, with the one timing of their
    variant; without a timing they say why; an older row timed again takes the newest timing."""
    from cifar_tune.orchestrator.export_hook import with_latency

    per_variant = pd.DataFrame([{"trial_id": t, "variant": v, "parity": "ok", "accuracy_change_pp": a}
                                for t, a in (("a", 0.0), ("b", -0.5)) for v in ("eager_fp32", "onnx_fp32")])
    timing = {"bench": [{"variant": v, "batch_size": b, "p50_ms": ms * b, "runs": 9, "speedup": s,
                         "speedup_ci_low": s * 0.9, "speedup_ci_high": s * 1.1, "latency_method": "once"}
                        for v, ms, s in (("eager_fp32", 2.0, 1.0), ("onnx_fp32", 1.0, 2.0)) for b in (1, 8)]}
    table = with_latency(per_variant, timing, [1, 8])
    assert len(table) == 8 and set(table["latency_method"]) == {"once"}
    assert table.set_index(["trial_id", "variant", "batch_size"]).loc[("b", "onnx_fp32", 8), "p50_ms"] == 8.0
    untimed = with_latency(per_variant, {"trial_id": "a", "error": "worker died"}, [1, 8])
    assert len(untimed) == 8 and untimed["p50_ms"].isna().all() if "p50_ms" in untimed else len(untimed) == 8
    assert set(untimed["latency_method"]) == {"not measured: worker died"}
    older = table.assign(p50_ms=99.0, latency_method="before")
    newest = {"bench": [{**row, "p50_ms": 5.0, "latency_method": "again"} for row in timing["bench"]]}
    again = with_latency(older, newest, [1, 8])
    assert len(again) == 8 and set(again["p50_ms"]) == {5.0} and set(again["latency_method"]) == {"again"}

    speedups = inference_speedups(table).set_index(["variant", "batch_size"])
    assert speedups.loc[("onnx_fp32", 8), "speedup"] == 2.0 and speedups.loc[("onnx_fp32", 8), "n"] == 9
    assert speedups.loc[("onnx_fp32", 8), "ci_low"] == pytest.approx(1.8)  # the timing's own interval, not trials'
    assert speedups.loc[("onnx_fp32", 1), "accuracy_change_pp"] == -0.25  # per trial, averaged


def test_median_ratio_interval_covers_the_ratio() -> None:
    rng = np.random.default_rng(1)
    base, fast = 2.0 * rng.lognormal(0, 0.05, 200), rng.lognormal(0, 0.05, 200)
    ratio, low, high = median_ratio_interval(base, fast)
    assert ratio == pytest.approx(float(np.median(base) / np.median(fast)))
    assert low < ratio < high and low < 2.0 < high and high - low < 0.1
    assert math.isnan(median_ratio_interval(base[:5], fast)[1])  # too few runs for an interval
    assert median_ratio_interval(base, fast) == (ratio, low, high)  # a rerun prints the same


@pytest.mark.parametrize("n", [6, 10, 25, 100, 1000])
def test_median_interval_from_order_statistics(n: int) -> None:
    times = np.random.default_rng(n).lognormal(size=n)
    low, high = median_interval(times)
    x = np.sort(times)
    r = int(np.flatnonzero(x == low)[0]) + 1  # the rank of the lower bound
    assert x[n - r] == high  # symmetric ranks: x(r) and x(n - r + 1)
    coverage = lambda rank: 1 - 2 * stats.binom.cdf(rank - 1, n, 0.5)  # noqa: E731
    assert coverage(r) >= 0.95 > coverage(r + 1)  # the narrowest interval that still covers 95%
    assert low <= np.median(times) <= high


def test_too_few_runs_give_no_interval_and_no_tail_percentiles() -> None:
    assert all(math.isnan(v) for v in median_interval([1.0, 2.0, 3.0, 4.0, 5.0]))  # n=5 covers only 94%
    assert math.isnan(percentile_or_nan(np.arange(99.0), 99)) and not math.isnan(percentile_or_nan(np.arange(100.0), 99))
    assert math.isnan(percentile_or_nan(np.arange(9.0), 90)) and percentile_or_nan(np.arange(10.0), 90) == pytest.approx(8.1)


class _Logged(export_mod.Variant):
    """A stand-in variant that records the order of its calls (and can fail when timed)."""

    def __init__(self, name: str, log: list[str], fail_after: int | None = None,
                 device: str = "cpu", runtime: str = "torch") -> None:
        super().__init__(name, "fp32", torch.device(device), runtime)
        self.log, self.fail_after = log, fail_after

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and sum(name == self.name for name in self.log) >= self.fail_after:
            raise RuntimeError("out of memory (simulated)")
        self.log.append(self.name)
        return prepared


def test_variants_are_timed_interleaved_round_by_round_and_a_failure_stays_in_its_row() -> None:
    log: list[str] = []
    variants = [_Logged("a", log), _Logged("b", log), _Logged("c", log, fail_after=3)]
    settings = ExportConfig(batch_sizes=[1], warmup_runs=1, min_runs=6, min_duration_s=0.0, rounds=3)
    rows = measure_latencies(variants, [1], settings)
    # First call and one warm-up each, then 3 rounds of 2 runs each: a, b (and c until it fails) take turns.
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    assert log[6:] == ["a", "a", "b", "b", "c", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert rows[("a", 1)]["runs"] == rows[("b", 1)]["runs"] == 6
    assert "out of memory" in rows[("c", 1)]["error"] and "p50_ms" not in rows[("c", 1)]


def test_only_torch_variants_on_a_gpu_use_cuda_events() -> None:
    assert uses_cuda_events(_Logged("eager", [], device="cuda"))
    assert not uses_cuda_events(_Logged("onnx", [], device="cuda", runtime="CUDAExecutionProvider"))
    assert not uses_cuda_events(_Logged("eager", []))


# --------------------------------------------------------------------------- choosing variants, torch.compile


def test_default_variants_are_decided_once_per_experiment(tiny_raw, tmp_path: Path) -> None:
    """export.variants null: a fresh experiment builds what the device runs; one whose bench.csv
    already holds exported trials (a resume) builds exactly their variants; an explicit list wins."""
    from cifar_tune.orchestrator.export_hook import ExportCallback
    from cifar_tune.search import SearchPlan

    def settings(variants: list[str] | None, earlier: list[str] | None) -> list[str] | None:
        config = validate_config({**tiny_raw, "export": {"variants": variants}})
        hook = ExportCallback(config, SearchPlan.of(config))
        folder = Location.of(tmp_path / str(len(list(tmp_path.iterdir()))))
        if earlier is not None:
            folder.write_csv("bench.csv", pd.DataFrame({"trial_id": "t0", "variant": earlier}))
        hook.experiment_dir = folder
        return hook.export_settings().variants

    assert settings(None, None) is None  # every variant the device runs
    assert settings(None, ["onnx_int8", "eager_fp32", "eager_fp32", "gone_since"]) == ["eager_fp32", "onnx_int8"]
    assert settings(["torchscript"], ["onnx_int8"]) == ["eager_fp32", "torchscript"]


def test_unknown_variant_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"export\.variants: unknown variant\(s\) 'tensorrt_fp8'; known: eager_fp32"):
        validate_config({"export": {"variants": ["onnx_fp32", "tensorrt_fp8"]}})
    chosen = validate_config({"export": {"variants": ["onnx_int8", "compiled"]}}).export.variants
    assert chosen == ["eager_fp32", "compiled", "onnx_int8"]  # the reference added; the documented order


def test_variants_this_machine_cannot_run_are_skipped_with_the_reason(trained, tmp_path: Path, monkeypatch) -> None:
    trial, data = trained
    monkeypatch.setattr(machine, "cxx_compiler", lambda: None)  # a CPU box without g++ or clang++
    settings = QUICK.model_copy(update={"variants": ["eager_fp32", "compiled", "compiled_cudagraphs", "aoti",
                                                     "onnx_fp16", "tensorrt"]})
    result = bench_checkpoint(trial / "checkpoint_000001", tmp_path, data.test_x, data.test_y, data.train_x, settings,
                              device=torch.device("cpu"), threads=1)
    status = {row["variant"]: row for row in result["parity"]}
    assert set(status) == {"eager_fp32", "compiled", "compiled_cudagraphs", "aoti", "onnx_fp16", "tensorrt"}
    assert status["eager_fp32"]["status"] == "ok" and not result["failed"]  # skipping is not failing
    assert "C++ compiler" in status["compiled"]["reason"] and status["compiled"]["status"] == "skipped"
    assert "C++ compiler" in status["aoti"]["reason"] and status["aoti"]["status"] == "skipped"
    assert "needs a CUDA device" in status["compiled_cudagraphs"]["reason"]
    assert "needs a CUDA device" in status["onnx_fp16"]["reason"]
    assert "needs a CUDA device" in status["tensorrt"]["reason"]
    assert {row["variant"] for row in result["bench"]} == {"eager_fp32"}
    assert not (tmp_path / "model.onnx").exists()  # no ONNX variant asked for: no ONNX export made


@pytest.mark.slow
def test_compiled_and_aoti_variants_meet_parity_and_a_later_trial_reuses_the_package(trained, tmp_path: Path,
                                                                                      monkeypatch) -> None:
    trial, data = trained
    settings = QUICK.model_copy(update={"variants": ["eager_fp32", "compiled", "compiled_frozen", "aoti"]})
    cache = Location.of(tmp_path / "cache")
    out = tmp_path / "first"
    result = bench_checkpoint(trial / "checkpoint_000001", out, data.test_x, data.test_y, data.train_x, settings,
                              device=torch.device("cpu"), threads=1, export_cache=cache)
    parity = {row["variant"]: row for row in result["parity"]}
    for name in ("compiled", "compiled_frozen"):  # frozen: batch norm folded into the convolutions, same answers
        assert parity[name]["status"] == "ok" and parity[name]["agreement"] >= 0.999, parity[name]
    rows = {row["batch_size"]: row for row in result["bench"] if row["variant"] == "compiled"}
    assert set(rows) == {1, 8}
    for row in rows.values():
        assert row["build_s"] > 0.5  # compiling takes real time, reported apart ...
        assert 1e3 * row["build_s"] > row["p50_ms"]  # ... and kept out of the steady-state latency
        assert row["runtime"] == "torch" and row["timer"] == "wall_clock" and math.isnan(row["file_mb"])
    # AOTInductor: one self-contained file, loaded (and checked) in a fresh process, as a deployment would.
    assert parity["aoti"]["status"] == "ok" and parity["aoti"]["agreement"] >= 0.999
    packaged = [row for row in result["bench"] if row["variant"] == "aoti"]
    assert len(packaged) == 2 and all(row["build_s"] > 0.5 and row["load_s"] > 0 for row in packaged)
    assert packaged[0]["file_mb"] == pytest.approx((out / "model.pt2").stat().st_size / 1e6)

    # A later trial (other weights, same architecture) loads the package the first one left in the
    # experiment's cache and swaps its own weights in: AOTInductor compiles once per experiment.
    assert cache.listdir() == [export_mod.aoti_key(torch.device("cpu"),
                                                   export_mod.load_best_model(trial / "checkpoint_000001")[0])]
    other = tmp_path / "other"
    fresh = _other_weights(trial, other)

    def no_compiling(*args, **kwargs):
        raise AssertionError("AOTInductor compiled again")

    monkeypatch.setattr(export_mod, "save_aoti", no_compiling)
    later = bench_checkpoint(other, tmp_path / "later", data.test_x, data.test_y, data.train_x,
                             settings.model_copy(update={"variants": ["eager_fp32", "aoti"]}),
                             device=torch.device("cpu"), threads=1, timed=False, export_cache=cache)
    swapped = {row["variant"]: row for row in later["parity"]}["aoti"]
    assert swapped["status"] == "ok" and swapped["agreement"] >= 0.999, swapped
    assert swapped["max_abs_diff"] < 1e-3  # its own weights: the first trial's would differ everywhere
    assert not (tmp_path / "later" / "model.pt2").exists()
    weights = torch.load(tmp_path / "later" / "model.aoti_weights.pt", weights_only=True)
    assert set(weights) == set(torch._inductor.aoti_load_package(str(out / "model.pt2")).get_constant_fqns())
    fp32_weights_mb = 4 * sum(p.numel() for p in fresh.parameters()) / 1e6  # the file holds them all
    assert later["variants"][1]["build_s"] < 0.5 and later["variants"][1]["file_mb"] > fp32_weights_mb


def _other_weights(trial: Path, folder: Path) -> torch.nn.Module:
    """A later trial's best_model.pt: the same architecture as `trial`'s, other weights."""
    folder.mkdir()
    saved = torch.load(trial / "checkpoint_000001" / "best_model.pt", weights_only=True)
    torch.manual_seed(7)
    fresh = export_mod.AlexNet(**TINY_MODEL)
    torch.save({**saved, "state_dict": fresh.state_dict()}, folder / "best_model.pt")
    return fresh


def test_a_later_trial_writes_model_onnx_into_the_first_ones_graph(trained, tmp_path: Path, monkeypatch) -> None:
    """ONNX export costs about 2 CPU-s a trial; a later trial of the same architecture writes its own
    weights into the graph the first one exported (left in the experiment's cache), and its ONNX
    variants, fp32 and INT8, meet parity with its own eager model. Neither asks for an AOTInductor
    package's key, which imports inductor (seconds of every export worker's start)."""
    trial, data = trained
    settings = QUICK.model_copy(update={"variants": ["eager_fp32", "onnx_fp32", "onnx_int8"]})

    def no_inductor(*args, **kwargs):
        raise AssertionError("aoti_key asked for, with no aoti variant")

    monkeypatch.setattr("cifar_tune.bench.aoti_key", no_inductor)
    cache = Location.of(tmp_path / "cache")
    bench_checkpoint(trial / "checkpoint_000001", tmp_path / "first", data.test_x, data.test_y, data.train_x,
                     settings, device=torch.device("cpu"), threads=1, timed=False, export_cache=cache)
    key = export_mod.onnx_key(export_mod.load_best_model(trial / "checkpoint_000001")[0])
    assert key in cache.listdir()

    _other_weights(trial, tmp_path / "other")

    def no_exporting(*args, **kwargs):
        raise AssertionError("ONNX exported again")

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", no_exporting)
        later = bench_checkpoint(tmp_path / "other", tmp_path / "later", data.test_x, data.test_y, data.train_x,
                                 settings, device=torch.device("cpu"), threads=1, timed=False, export_cache=cache)
    parity = {row["variant"]: row for row in later["parity"]}
    assert parity["onnx_fp32"]["status"] == "ok" and parity["onnx_fp32"]["max_abs_diff"] < 1e-3, parity
    assert parity["onnx_int8"]["status"] == "ok", parity  # quantized from the swapped graph
    assert (tmp_path / "later" / "model.onnx").read_bytes() != (tmp_path / "first" / "model.onnx").read_bytes()

    # A template whose graph no longer answers as the model does (a Gemm's transB flipped: the names
    # and shapes of its weights still fit) is not used: model.onnx is exported afresh, and right.
    broken = onnx.load(str(tmp_path / "first" / "model.onnx"))
    gemm = next(node for node in broken.graph.node if node.op_type == "Gemm")
    for attribute in gemm.attribute:
        if attribute.name == "transB":
            attribute.i = 1 - attribute.i
    template = tmp_path / "broken.onnx"
    onnx.save(broken, str(template))
    model = export_mod.load_best_model(tmp_path / "other")[0]
    images = normalize(data.train_x[:8], channels_last=False)
    path = export_mod.save_onnx(model, tmp_path / "fresh.onnx", template, images)
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": images.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model.eval()(images).numpy(), atol=1e-4)


@pytest.mark.slow
def test_compiled_copies_past_dynamos_default_recompile_limit_still_compile(monkeypatch) -> None:
    """Four compiled copies of AlexNet in one process (a GPU export, or a CPU worker reused for the
    next trial) make up to 4 x 3 graphs of one code object, past dynamo's default limit of 8, beyond which
    it runs eager under the variant's name. Each must compile, and a limit hit must be loud."""
    def small() -> torch.nn.Module:  # the same code objects as any nn.Sequential, compiled in a fraction of the time
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 10)).eval()

    torch._dynamo.reset()
    x = torch.randn(500, 3, 32, 32)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    alive = []  # as in an export: every variant alive until its trial's parity and timing are done
    per_copy = []  # graphs each copy added
    for freezing in (False, True, False, True):
        model = small()
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        alive.append(export_mod.CompiledVariant("compiled", model, torch.device("cpu"), freezing=freezing))
        per_copy.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
        with torch.no_grad():
            assert torch.allclose(alive[-1].predict(x), model(x), atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs > 8  # past the default limit
    alive.clear()
    torch._dynamo.reset()
    # A limit the first copy's graphs fill (how many a copy makes is a torch version's detail): a later
    # copy hits it, loudly.
    monkeypatch.setattr(export_mod, "RECOMPILE_LIMIT", per_copy[0])
    with pytest.raises(Exception, match="recompile_limit|RecompileLimit"):
        for freezing in (False, True, False, True):
            alive.append(export_mod.CompiledVariant("compiled", small(), torch.device("cpu"), freezing=freezing))
    assert 1 <= len(alive) < 4
    alive.clear()
    torch._dynamo.reset()
