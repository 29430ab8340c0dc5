"""How many trials shared a trial's device during each of its epochs.

Per-trial training times mean little without it: four trials packed on one GPU each train slower
than one alone. A `DeviceLedger` actor (one per run, created by the orchestrator with no CPU of its
own, found by name in the run's Ray namespace) keeps which trials are in an epoch on which device.
A trial enters at the start of each epoch and, leaving at its end, learns the most trials that were
on its device at any moment in between (itself included). The count is recorded with the epoch's metrics (names.SHARING_METRIC).

A device is a node's CPUs, or the node's GPU(s) the trial was given.
"""

from __future__ import annotations

from typing import Any

import ray


class DeviceLedger:
    """The trials now in an epoch, by device, and each one's peak count of device sharers."""

    def __init__(self) -> None:
        self.device_of: dict[str, str] = {}  # trial id -> device key
        self.peak: dict[str, int] = {}  # trial id -> most trials on its device during its current epoch

    def _on(self, device: str) -> list[str]:
        return [trial for trial, key in self.device_of.items() if key == device]

    def enter(self, trial_id: str, device: str) -> None:
        self.device_of[trial_id] = device
        sharers = self._on(device)
        for trial in sharers:
            self.peak[trial] = max(self.peak.get(trial, 0), len(sharers))
        self.peak[trial_id] = len(sharers)  # a new epoch starts from those there now

    def leave(self, trial_id: str) -> int | None:
        """End the trial's epoch; the most trials on its device during it (None: it never entered)."""
        self.device_of.pop(trial_id, None)
        return self.peak.pop(trial_id, None)


LEDGER_NAME = "cifar-tune-device-ledger"  # unique within a driver's namespace: one run per driver


def start_ledger() -> Any:
    """The run's DeviceLedger actor. Keep the handle while the trials run: an actor that is not
    detached ends once no handle to it is left, even a named one."""
    return ray.remote(num_cpus=0)(DeviceLedger).options(name=LEDGER_NAME, get_if_exists=True).remote()


def find_ledger() -> Any:
    """The run's ledger, or None where there is none (a trial driven by code that started none)."""
    try:
        return ray.get_actor(LEDGER_NAME)
    except ValueError:
        return None


def device_key(device: str) -> str:
    """This worker's device as the ledger knows it: node id plus "cpu" or the GPU ids Ray gave it."""
    context = ray.get_runtime_context()
    where = "cpu" if device == "cpu" else "gpu:" + ",".join(map(str, context.get_accelerator_ids().get("GPU", [])))
    return f"{context.get_node_id()}/{where}"


class Occupancy:
    """A trial's side of the ledger; every call is best effort (no ledger, or a lost one: no count)."""

    def __init__(self, trial_id: str, device: str) -> None:
        self.ledger, self.trial_id = find_ledger(), trial_id
        self.key = device_key(device) if self.ledger is not None else ""

    def epoch_starts(self) -> None:
        if self.ledger is not None:
            self.ledger.enter.remote(self.trial_id, self.key)  # not awaited: calls from one caller stay in order

    def epoch_ends(self) -> int | None:
        if self.ledger is None:
            return None
        try:
            return ray.get(self.ledger.leave.remote(self.trial_id), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):  # the ledger's node is gone: training goes on
            self.ledger = None
            return None
