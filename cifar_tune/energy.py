"""Energy, where the hardware tells it: NVML's counter on an NVIDIA GPU (Volta or newer), the
RAPL package counters under /sys/class/powercap on a Linux CPU.

    meter = EnergyMeter.for_device(torch.device("cuda"))
    start = meter.read()            # joules since some fixed moment, or None
    ... work ...
    used = meter.joules_since(start)  # None where the hardware does not tell

Where neither is available (no NVML, a GPU without the counter, a VM without powercap, counters
readable only by root) the meter says why (`reason`), once, and every reading is None. On a shared
device the counter includes everyone's work: a trial's epoch energy is the device's energy during
that epoch (see `trials_sharing_device`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from cifar_tune.machine import nvml_handle

POWERCAP = "/sys/class/powercap"


@dataclass
class _Rapl:
    """One package's counter: energy_uj wraps to 0 after max_energy_range_uj."""

    energy: str
    wrap_uj: int

    def read_uj(self) -> int:
        with open(self.energy) as f:
            return int(f.read())


@dataclass
class EnergyMeter:
    source: str  # "nvml", "rapl", or "" where no counter can be read
    reason: str = ""  # why there is no reading (empty when there is)
    _handle: Any = None
    _pynvml: Any = None
    _packages: list[_Rapl] = field(default_factory=list)

    @classmethod
    def for_device(cls, device: torch.device | str) -> EnergyMeter:
        device = torch.device(device)
        return cls._nvml(device) if device.type == "cuda" else cls._rapl()

    @classmethod
    def _nvml(cls, device: torch.device) -> EnergyMeter:
        try:
            pynvml, handle = nvml_handle(device)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except ImportError:
            return cls("", "no NVML in this Python (pip install nvidia-ml-py)")
        except Exception as exc:  # NVMLError_NotSupported before Volta, no driver access, ...
            return cls("", f"NVML has no energy counter for this GPU ({type(exc).__name__}: {exc})")
        return cls("nvml", _handle=handle, _pynvml=pynvml)

    @classmethod
    def _rapl(cls) -> EnergyMeter:
        # Package domains only (intel-rapl:0, intel-rapl:1, ...; their subdomains are intel-rapl:0:0, ...);
        # Linux names AMD's RAPL the same way.
        folders = sorted(p for p in glob.glob(f"{POWERCAP}/intel-rapl:*") if p.count(":") == 1)
        if not folders:
            return cls("", f"no RAPL package counters in {POWERCAP} (a VM, a non-x86 CPU or not Linux)")
        packages = []
        for folder in folders:
            try:
                with open(os.path.join(folder, "max_energy_range_uj")) as f:
                    package = _Rapl(os.path.join(folder, "energy_uj"), int(f.read()))
                package.read_uj()
            except PermissionError:
                return cls("", f"{folder}/energy_uj is readable by root only (Linux 5.10 and later)")
            except (OSError, ValueError) as exc:
                return cls("", f"{folder}: unreadable ({exc})")
            packages.append(package)
        return cls("rapl", _packages=packages)

    @property
    def available(self) -> bool:
        return bool(self.source)

    def describe(self) -> str:
        """What the readings come from, or why there are none: for a row's `energy_source`."""
        return self.source if self.available else f"none: {self.reason}"

    def read(self) -> Any:
        """An opaque reading for `joules_since`, or None without a counter."""
        if self.source == "nvml":
            return self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)  # mJ since driver load
        if self.source == "rapl":
            return [package.read_uj() for package in self._packages]
        return None

    def joules_since(self, start: Any) -> float | None:
        if start is None:
            return None
        now = self.read()
        if self.source == "nvml":
            return (now - start) / 1e3
        # A package counter that passed its maximum started again from 0 (at most once per reading).
        return sum((b - a) % package.wrap_uj for a, b, package in zip(start, now, self._packages, strict=True)) / 1e6
