"""The precision policy: what each precision switches on, and what a device may refuse."""

from __future__ import annotations

import platform

import pytest
import torch

from cifar_tune.config import ConfigError, validate_config
from cifar_tune.orchestrator.preflight import describe_plan, preflight
from cifar_tune.precision import POLICIES, device_problem, policy, well_run_precisions
from cifar_tune.search import SearchPlan, plan_experiment


def _preflight(raw: dict) -> str:
    config = validate_config(raw)
    return preflight(config, SearchPlan.of(config))


def test_policies() -> None:
    assert set(POLICIES) == {"fp32", "tf32", "amp_fp16", "amp_bf16"}
    assert policy("amp_fp16").grad_scaler and policy("amp_fp16").autocast_dtype == torch.float16
    assert not policy("amp_bf16").grad_scaler and policy("amp_bf16").autocast_dtype == torch.bfloat16
    assert policy("fp32").autocast_dtype is None and not policy("fp32").allow_tf32
    assert policy("tf32").allow_tf32


@pytest.mark.parametrize("name", ["fp32", "tf32"])
def test_tf32_flags_follow_the_policy(name: str) -> None:
    policy(name).apply_backend_flags()
    assert torch.backends.cuda.matmul.allow_tf32 is (name == "tf32")
    assert torch.backends.cudnn.allow_tf32 is (name == "tf32")
    assert torch.get_float32_matmul_precision() == ("high" if name == "tf32" else "highest")


def test_autocast_and_scaler_on_cpu() -> None:
    layer = torch.nn.Linear(4, 4)
    with policy("amp_bf16").autocast("cpu"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with policy("fp32").autocast("cpu"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert policy("amp_fp16").make_scaler("cpu").is_enabled()
    assert not policy("fp32").make_scaler("cpu").is_enabled()


def test_cpu_verdicts(monkeypatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")  # the x86 verdicts, whatever this CPU is
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert "20x slower" in device_problem("amp_fp16", "cpu")
    assert "CUDA" in device_problem("tf32", "cpu")
    assert device_problem("fp32", "cpu") is None and device_problem("amp_bf16", "cpu") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: True)
    assert device_problem("amp_fp16", "cpu") is None  # AMX-FP16 runs fp16 GEMMs natively
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert "emulated" in device_problem("amp_bf16", "cpu")


def test_cpu_verdicts_off_x86_say_what_is_not_known(monkeypatch) -> None:
    # On Arm, torch's x86 capability queries answer False; the verdict must not claim x86 facts.
    _simulate_cpu(monkeypatch, bf16=False)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    kept, left_out = well_run_precisions("cpu")
    assert kept == ["fp32"]
    for name in ("amp_bf16", "amp_fp16"):
        assert "not been measured on this aarch64 CPU" in left_out[name] and "AMX" not in left_out[name]
    assert "CUDA" in left_out["tf32"]


def test_preflight_rejects_fp16_on_cpu_unless_opted_in(tiny_raw, monkeypatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
    raw = {**tiny_raw, "search": {"precision": ["fp32", "amp_fp16"]}}
    with pytest.raises(ConfigError, match=r"search\.precision: 'amp_fp16' on cpu: .*allow_slow_precision"):
        _preflight(raw)
    raw["train"] = {**raw["train"], "allow_slow_precision": True}
    assert _preflight(raw) == "cpu"


def test_preflight_rejects_gpus_on_a_gpu_less_local_ray(tiny_raw, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raw = {**tiny_raw, "resources": {"gpus_per_trial": 0.5}}
    with pytest.raises(ConfigError, match=r"resources\.gpus_per_trial: 0\.5 .*no usable GPU"):
        _preflight(raw)
    # On a cluster the driver need not have the GPU itself.
    raw["ray"] = {"address": "auto"}
    assert _preflight(raw) == "cuda"


def test_plan_lists_trials_and_resources(tiny_raw) -> None:
    raw = {**tiny_raw, "search": {"precision": ["fp32", "amp_bf16"], "seed": [0, 1]},
           "train": {**tiny_raw["train"], "allow_slow_precision": True}}  # the plan is the same on any CPU
    config = validate_config(raw)
    text = describe_plan(config, SearchPlan.of(config))
    assert "4 trial(s) x 3 epoch(s) on cpu" in text and "1 CPU, 0 GPU" in text
    assert text.count("  trial ") == 4 and "precision=amp_bf16, seed=1" in text


def _simulate_cpu(monkeypatch, bf16: bool, amx_fp16: bool = False) -> None:
    """An x86 CPU with or without native bf16, whatever this machine is (torch's capability queries)."""
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16)


@pytest.mark.parametrize("bf16, expected", [(True, ["fp32", "amp_bf16"]), (False, ["fp32"])])
def test_auto_precision_is_what_this_cpu_runs_well(monkeypatch, bf16: bool, expected: list[str]) -> None:
    _simulate_cpu(monkeypatch, bf16)
    kept, left_out = well_run_precisions("cpu")
    assert kept == expected
    assert set(left_out) == {"fp32", "tf32", "amp_fp16", "amp_bf16"} - set(expected)
    assert "CUDA" in left_out["tf32"] and "20x slower" in left_out["amp_fp16"]


def test_auto_precision_on_a_gpu_this_process_cannot_see(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kept, left_out = well_run_precisions("cuda")
    assert kept == ["fp32", "amp_fp16"] and "compute capability" in left_out["amp_bf16"]


def test_preflight_expands_auto_and_explains(tiny_raw, monkeypatch) -> None:
    _simulate_cpu(monkeypatch, bf16=False)  # an AVX2-only CPU
    config = validate_config({**tiny_raw, "search": {"precision": "auto", "seed": [0, 1]}})
    resolved, plan, notes = plan_experiment(config)
    assert resolved.search["precision"] == ["fp32"] and config.search["precision"] == "auto"
    assert notes[0] == "search.precision: auto on cpu: running fp32"
    assert any(line.startswith("  left out amp_bf16: bf16 autocast on this CPU") for line in notes)
    assert len(plan.trials) == 2 and plan.values("precision") == ["fp32"]
    with pytest.raises(ValueError, match="must be expanded"):  # the one entry point; planning alone refuses auto
        SearchPlan.of(config)
    # An explicit list keeps the strict refusal.
    with pytest.raises(ConfigError, match="search.precision: 'amp_bf16' on cpu: .*emulated"):
        _preflight({**tiny_raw, "search": {"precision": ["fp32", "amp_bf16"]}})


def test_auto_is_only_for_precision(tiny_raw) -> None:
    with pytest.raises(ConfigError, match=r"search.lr: expected a list of values or a mapping"):
        validate_config({**tiny_raw, "search": {"lr": "auto"}})
