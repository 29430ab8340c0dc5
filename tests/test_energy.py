"""Energy readings: RAPL package counters (with wrap-around) and NVML's counter, both faked here
as this machine may have neither; what a trainer, a timing block and a latency row record with and
without them; and the reason given where the hardware does not tell."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from cifar_tune import energy
from cifar_tune.config import validate_config
from cifar_tune.data import load_data
from cifar_tune.energy import EnergyMeter
from cifar_tune.export import EagerVariant
from cifar_tune.meters import LatencyMeter
from cifar_tune.models import build_model
from cifar_tune.train import Trainer


def _powercap(root: Path, packages: dict[str, tuple[int, int]]) -> Path:
    """A fake /sys/class/powercap: {domain: (energy_uj, max_energy_range_uj)}, with a subdomain that must be ignored."""
    for name, (value, wrap) in packages.items():
        (root / name).mkdir(parents=True)
        (root / name / "energy_uj").write_text(f"{value}\n")
        (root / name / "max_energy_range_uj").write_text(f"{wrap}\n")
    (root / "intel-rapl:0:0").mkdir()
    (root / "intel-rapl:0:0" / "energy_uj").write_text("5\n")
    return root


def test_rapl_sums_packages_and_survives_a_counter_wrapping(tmp_path: Path, monkeypatch) -> None:
    root = _powercap(tmp_path, {"intel-rapl:0": (900, 1000), "intel-rapl:1": (10, 1000)})
    monkeypatch.setattr(energy, "POWERCAP", str(root))
    meter = EnergyMeter.for_device("cpu")
    assert meter.source == "rapl" and len(meter._packages) == 2 and meter.describe() == "rapl"
    start = meter.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("100\n")  # passed 1000 and started again: 200 uJ
    (root / "intel-rapl:1" / "energy_uj").write_text("310\n")  # 300 uJ
    assert meter.joules_since(start) == pytest.approx(500e-6)


def test_no_counter_gives_no_reading_and_says_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", str(tmp_path / "absent"))
    meter = EnergyMeter.for_device("cpu")
    assert not meter.available and meter.read() is None and meter.joules_since(meter.read()) is None
    assert "no RAPL package counters" in meter.reason and meter.describe().startswith("none: ")

    root = _powercap(tmp_path / "locked", {"intel-rapl:0": (1, 1000)})
    monkeypatch.setattr(energy, "POWERCAP", str(root))

    def refuse(self: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(energy._Rapl, "read_uj", refuse)
    assert "root only" in EnergyMeter.for_device("cpu").reason


class _FakeNvml:
    """pynvml's energy call: millijoules, rising 2.5 J per reading."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        self.readings = itertools.count(1000, 2500)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:  # noqa: N802 (pynvml's name)
        return next(self.readings)


def test_nvml_counter_in_joules_and_the_reasons_without_it(monkeypatch) -> None:
    fake = _FakeNvml()
    monkeypatch.setattr(energy, "nvml_handle", lambda device: (fake, "handle"))
    meter = EnergyMeter.for_device("cuda")
    assert meter.source == "nvml"
    assert meter.joules_since(meter.read()) == pytest.approx(2.5)

    def missing(device: torch.device) -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(energy, "nvml_handle", missing)
    assert "nvidia-ml-py" in EnergyMeter.for_device("cuda").reason

    def unsupported(device: torch.device) -> Any:
        raise RuntimeError("Not Supported")

    monkeypatch.setattr(energy, "nvml_handle", unsupported)
    assert "no energy counter" in EnergyMeter.for_device("cuda").reason


@pytest.fixture
def rising_rapl(tmp_path: Path, monkeypatch) -> None:
    """A RAPL package whose counter rises 0.25 J per reading."""
    monkeypatch.setattr(energy, "POWERCAP", str(_powercap(tmp_path, {"intel-rapl:0": (0, 10**12)})))
    counter = itertools.count(0, 250_000)
    monkeypatch.setattr(energy._Rapl, "read_uj", lambda self: next(counter))


def test_epochs_timing_blocks_and_latency_rows_record_energy_where_there_is_a_counter(tiny_raw, rising_rapl) -> None:
    config = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1}})
    trainer = Trainer(config.train, config.model, load_data(config.data))
    metrics = trainer.train_epoch()
    images = trainer.steps_per_epoch * trainer.batch_size
    assert metrics["energy_j"] == pytest.approx(0.25) and metrics["images_per_j"] == pytest.approx(images / 0.25)
    assert trainer.test()["energy_source"] == "rapl"
    block = trainer.time_steps(2)
    assert block["energy_j"] == pytest.approx(0.25) and block["images_per_j"] == pytest.approx(2 * 32 / 0.25)

    meter = LatencyMeter(EagerVariant("eager_fp32", build_model(config.model), torch.device("cpu")), 2)
    meter.start(warmup_runs=0)
    meter.time_round(min_runs=4, min_duration_s=0)
    meter.time_round(min_runs=4, min_duration_s=0)
    row = meter.result()  # two rounds of 0.25 J over 8 runs of 2 images
    assert row["energy_mj_per_image"] == pytest.approx(1e3 * 0.5 / 16) and row["energy_source"] == "rapl"


def test_without_a_counter_nothing_is_made_up(tiny_raw, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", str(tmp_path / "absent"))
    config = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1}})
    trainer = Trainer(config.train, config.model, load_data(config.data))
    metrics = trainer.train_epoch()
    assert "energy_j" not in metrics and "images_per_j" not in metrics
    assert trainer.test()["energy_source"].startswith("none: ")
    assert trainer.time_steps(1)["energy_j"] is None
    meter = LatencyMeter(EagerVariant("eager_fp32", build_model(config.model), torch.device("cpu")), 1)
    meter.start(warmup_runs=0)
    meter.time_round(min_runs=2, min_duration_s=0)
    assert math.isnan(meter.result()["energy_mj_per_image"])
