"""Meters and their statistics: latency of a callable, the memory its calls need, intervals.

    meter = LatencyMeter(variant, batch_size)   # anything with prepare / run / sync / device / runtime
    meter.start(warmup_runs)                    # first call timed apart, warm-up, peak memory
    meter.time_round(min_runs, min_duration_s)  # as many rounds as wanted, interleaved with others
    meter.result()                              # p50 with a 95% interval, p90 / p99 where supported

Energy comes from cifar_tune.energy. Nothing here knows what a variant is: bench.py and the
benchmarks hand these meters their callables.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifar_tune.energy import EnergyMeter
from cifar_tune.errors import short_error

if TYPE_CHECKING:
    from cifar_tune.config import ExportConfig

# --------------------------------------------------------------------------- interval statistics


def median_interval(times: list[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median from order statistics: [x(r), x(n-r+1)] of the
    sorted sample, r the largest rank whose binomial tail P(B < r), B ~ Bin(n, 1/2), stays under
    (1 - confidence) / 2. (NaN, NaN) when the sample is too small for one (n < 6 at 95%)."""
    x = np.sort(np.asarray(times, dtype=float))
    n, tail = len(x), (1 - confidence) / 2
    r, below = 0, 0.0  # invariant: below = P(B <= r - 1)
    while r < n // 2:
        below_next = below + math.comb(n, r) / 2**n
        if below_next > tail:
            break
        below, r = below_next, r + 1
    return (float(x[r - 1]), float(x[n - r])) if r >= 1 else (math.nan, math.nan)


def percentile_or_nan(times: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile where the sample supports it: at least 1 / (1 - q/100) runs (p90: 10,
    p99: 100); below that it would only be the maximum under another name, so NaN."""
    return float(np.percentile(times, q)) if len(times) >= round(1 / (1 - q / 100)) else math.nan


def median_ratio_interval(baseline: list[float] | np.ndarray, times: list[float] | np.ndarray,
                          confidence: float = 0.95, resamples: int = 2000) -> tuple[float, float, float]:
    """median(baseline) / median(times), a speedup when both are latencies, with a percentile
    bootstrap interval (each sample resampled on its own, a fixed seed so a rerun prints the same);
    (ratio, NaN, NaN) when either sample has fewer than 6 runs, as for median_interval."""
    base, new = np.asarray(baseline, dtype=float), np.asarray(times, dtype=float)
    ratio = float(np.median(base) / np.median(new))
    if len(base) < 6 or len(new) < 6:
        return ratio, math.nan, math.nan
    rng = np.random.default_rng(0)
    ratios = (np.median(rng.choice(base, (resamples, len(base))), axis=1)
              / np.median(rng.choice(new, (resamples, len(new))), axis=1))
    low, high = np.percentile(ratios, [50 * (1 - confidence), 50 * (1 + confidence)])
    return ratio, float(low), float(high)


# --------------------------------------------------------------------------- memory


def resident_mb() -> float:
    """This process's resident set (MB) from /proc; NaN where there is none."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return math.nan
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class PeakMemory:
    """What a block of calls needed beyond what was alive before it (MB): activations, workspaces,
    outputs, a CUDA graph's pool. Not the process's peak, which would count every other variant's
    weights alive at the time and grow with the order they were built in.

    On CUDA: torch's peak allocation over the block minus its allocation at the start (ONNX Runtime's
    own arena is not counted); on a CPU: how much the resident set grew. The CUDA arithmetic is tested
    on a CPU with fake allocator counters; only a GPU shows real numbers."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mb = device, math.nan
        self._start = math.nan

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)  # the peak restarts from what is allocated now
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = resident_mb()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 1e6
        else:
            self.mb = resident_mb() - self._start


# --------------------------------------------------------------------------- latency


def uses_cuda_events(variant: Any) -> bool:
    """Torch variants on a GPU are timed with CUDA events on their stream: the GPU's own clock
    around the work, without the host's wake-up after a synchronize. ONNX Runtime's CUDA provider
    runs on its own stream and synchronizes it before `run` returns, so its calls are timed on the
    host clock (and each row says which: `timer`)."""
    return variant.device.type == "cuda" and variant.runtime == "torch"


class LatencyMeter:
    """The timed runs of one variant at one batch size, gathered over several rounds.

    `start` makes the first call (timed apart: kernel choice, allocation, lazy init) and the
    warm-up runs, and measures memory; each `time_round` adds timed runs; `result` summarizes
    them all. Interleaving rounds of every variant (`measure_latencies`) puts slow drift of the
    machine on every variant alike instead of on whichever ran during it."""

    def __init__(self, variant: Any, batch_size: int) -> None:
        self.variant, self.batch_size = variant, batch_size
        self.x = variant.prepare(torch.randn(batch_size, 3, 32, 32))
        self.times: list[float] = []
        self.first_call_s = math.nan
        self.peak_memory_mb = math.nan
        self.events = uses_cuda_events(variant)
        self.energy = EnergyMeter.for_device(variant.device)
        self.energy_j: float | None = 0.0 if self.energy.available else None  # over the timed runs

    def _call(self) -> float:
        if self.events:
            with torch.cuda.device(self.variant.device):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                self.variant.run(self.x)
                end.record()
                end.synchronize()
                return begin.elapsed_time(end) / 1e3  # ms -> s
        t0 = time.perf_counter()
        self.variant.run(self.x)
        self.variant.sync()
        return time.perf_counter() - t0

    def start(self, warmup_runs: int) -> None:
        self.variant.sync()
        with PeakMemory(self.variant.device) as memory:
            t0 = time.perf_counter()
            self.variant.run(self.x)
            self.variant.sync()
            self.first_call_s = time.perf_counter() - t0  # wall clock: what a caller waits the first time
            for _ in range(warmup_runs):
                self.variant.run(self.x)
        self.peak_memory_mb = memory.mb

    def time_round(self, min_runs: int, min_duration_s: float) -> None:
        started, runs, energy_start = time.perf_counter(), 0, self.energy.read()
        while runs < min_runs or time.perf_counter() - started < min_duration_s:
            self.times.append(self._call())
            runs += 1
        used = self.energy.joules_since(energy_start)
        if self.energy_j is not None and used is not None:
            self.energy_j += used

    def result(self) -> dict[str, Any]:
        """p50 with its 95% interval (order statistics), p90 and p99 where there are enough runs
        for them (else empty: see `runs`), mean, images/s, first call, memory, the clock used."""
        times = self.times
        p50 = float(np.percentile(times, 50))
        low, high = median_interval(times)
        return {"batch_size": self.batch_size, "runs": len(times), "first_call_ms": 1e3 * self.first_call_s,
                "peak_memory_mb": self.peak_memory_mb, "p50_ms": 1e3 * p50, "p50_ci_low_ms": 1e3 * low,
                "p50_ci_high_ms": 1e3 * high, "p90_ms": 1e3 * percentile_or_nan(times, 90),
                "p99_ms": 1e3 * percentile_or_nan(times, 99), "mean_ms": 1e3 * float(np.mean(times)),
                "images_per_s": self.batch_size / p50, "timer": "cuda_events" if self.events else "wall_clock",
                # The device's energy over the timed runs, per image (the whole device: all it ran meanwhile).
                "energy_mj_per_image": (1e3 * self.energy_j / (len(times) * self.batch_size)
                                        if self.energy_j else math.nan),
                "energy_source": self.energy.describe()}


def recover_after_failure(device: torch.device) -> None:
    """After a call failed on a GPU (out of memory at a large batch), give its cached blocks back so
    the next variant starts clean. A sticky CUDA error (an illegal address) poisons the whole process
    and cannot be recovered here; only a GPU shows which kind it was."""
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: S110 - the original failure is what gets reported
            pass


def measure_latencies(variants: list[Any], batch_sizes: list[int], settings: ExportConfig,
                      with_times: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
    """Every variant at every batch size: first calls and warm-ups, then `settings.rounds` rounds, each
    timing every (variant, batch size) in turn for its share of `min_runs` and `min_duration_s`.
    {(variant name, batch size): latency row, or {"batch_size", "error"} where it failed (out of
    memory at the largest batch, a graph replay error): one failure never costs the other rows.
    `with_times`: each row also holds its timed runs in seconds (`times_s`), for intervals of ratios."""
    meters: dict[tuple[str, int], LatencyMeter] = {}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for variant in variants:
        for batch_size in batch_sizes:
            try:
                meter = LatencyMeter(variant, batch_size)
                meter.start(settings.warmup_runs)
                meters[(variant.name, batch_size)] = meter
            except Exception as exc:
                rows[(variant.name, batch_size)] = {"batch_size": batch_size, "error": short_error(exc)}
                recover_after_failure(variant.device)
    runs_per_round = math.ceil(settings.min_runs / settings.rounds)
    for _ in range(settings.rounds):
        for key, meter in list(meters.items()):
            try:
                meter.time_round(runs_per_round, settings.min_duration_s / settings.rounds)
            except Exception as exc:
                rows[key] = {"batch_size": key[1], "error": short_error(exc)}
                del meters[key]
                recover_after_failure(meter.variant.device)
    rows.update({key: {**meter.result(), **({"times_s": list(meter.times)} if with_times else {})}
                 for key, meter in meters.items()})
    return rows


def latency(variant: Any, batch_size: int, settings: ExportConfig) -> dict[str, Any]:
    """One variant at one batch size on its own (not interleaved): for benchmarks that interleave
    themselves. The hook and `cifar-tune bench` use `measure_latencies`."""
    meter = LatencyMeter(variant, batch_size)
    meter.start(settings.warmup_runs)
    meter.time_round(settings.min_runs, settings.min_duration_s)
    return meter.result()
