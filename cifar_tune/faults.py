"""Fault injection for the tests: not a feature, not in the config.

The tests set CIFAR_TUNE_FAULTS to JSON, e.g. `{"fail_at_epoch": 2, "fail_export_seed": 1}`; the
driver reads it once per run or resume and hands it to the trials and export tasks with their
parameters (never through the trial config, so no run, log or checkpoint carries it). Unset, as
everywhere outside the tests, nothing is injected.

    fail_at_epoch      a trial raises once, right after reporting this epoch (a marker in its folder
                       remembers; never at its last epoch, nor when resumed past it)
    fail_export_seed   the export task of every trial with this seed raises
    crash_export_seed  the export task of every trial with this seed kills its own worker process
    epoch_pause_s      every trial sleeps this long after reporting each epoch but its last: a window
                       in which a test kills or interrupts a trial mid-run, bought without CPU
    epoch_hold_s       every trial sleeps this long at the start of each epoch, inside the window the
                       device ledger counts: trials whose runs overlap surely share a device on record
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cifar_tune.storage import Location

ENV = "CIFAR_TUNE_FAULTS"
CRASH_LOG = "crashed_attempts.txt"  # one line per crashed attempt (its pid), in the export folder
FAILED_MARKER = "injected_failure.txt"  # in a trial's folder once fail_at_epoch has fired there

ExportFault = Literal["fail", "crash"] | None


@dataclass(frozen=True)
class Faults:
    fail_at_epoch: int | None = None
    fail_export_seed: int | None = None
    crash_export_seed: int | None = None
    epoch_pause_s: float | None = None
    epoch_hold_s: float | None = None

    def fail_now(self, epoch: int, last_epoch: bool, trial_dir: str) -> bool:
        """Whether fail_at_epoch fires after this epoch of the trial whose folder is `trial_dir`."""
        marker = Path(trial_dir) / FAILED_MARKER
        if self.fail_at_epoch != epoch or last_epoch or marker.exists():
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"fail_at_epoch {epoch}\n")
        return True

    def pause(self, last_epoch: bool) -> None:
        """Sleep epoch_pause_s after an epoch that is not the trial's last (sleeping changes no number)."""
        if self.epoch_pause_s and not last_epoch:
            time.sleep(self.epoch_pause_s)

    def hold(self) -> None:
        """Sleep epoch_hold_s as an epoch starts (its numbers do not change: the Trainer times itself)."""
        if self.epoch_hold_s:
            time.sleep(self.epoch_hold_s)

    def export_fault(self, seed: int | None) -> ExportFault:
        """What the export task of a trial with this seed is to suffer, if anything."""
        if seed is not None and seed == self.fail_export_seed:
            return "fail"
        if seed is not None and seed == self.crash_export_seed:
            return "crash"
        return None


def current_faults() -> Faults:
    """The faults the environment asks for (none when CIFAR_TUNE_FAULTS is unset)."""
    text = os.environ.get(ENV)
    if not text:
        return Faults()
    asked = json.loads(text)
    unknown = set(asked) - {f.name for f in fields(Faults)}
    if unknown:
        raise ValueError(f"{ENV}: unknown fault(s) {sorted(unknown)}; known: {[f.name for f in fields(Faults)]}")
    return Faults(**asked)


def inject_export_fault(fault: ExportFault, out: Location) -> None:
    """Called first thing in an export task: raise ("fail"), or log the attempt to the export
    folder's CRASH_LOG and kill this worker process ("crash", as an out-of-memory kill would)."""
    if fault == "fail":
        raise RuntimeError("fail_export_seed: export failure injected for this trial (a test's fault)")
    if fault == "crash":
        earlier = out.read_text(CRASH_LOG) if out.exists(CRASH_LOG) else ""
        out.write_text(CRASH_LOG, earlier + f"{os.getpid()}\n")
        os._exit(1)
