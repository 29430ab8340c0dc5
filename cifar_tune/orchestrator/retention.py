"""Which checkpoints a run keeps: each trial's latest, which holds the best weights as well as the
state a resume needs (cifar_tune/checkpoints.py). The driver deletes a trial's older checkpoints,
but only once the experiment state Tune saved last no longer names them, since a resume restores
each trial from the checkpoint that saved state names.

Why not Tune's own `CheckpointConfig(num_to_keep=1)`: to stay consistent with its deletions, Tune
then saves the whole experiment state (every trial's tens of kB) after every trial checkpoint, so a
study of N trials costs the driver O(N^2) (benchmarks/tune_snapshots.py; RESULTS.md, "Scale").
Here Tune keeps every checkpoint and saves its state on its own period; this callback looks at most
every `period_s` seconds (longer where reading the saved state is slow: at most about 5% of the
driver's time, as Tune spaces its own saves), and once more when the experiment ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import time
from typing import Any

from ray import tune
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.trainable.metadata import _TrainingRunMetadata

PRUNE_PERIOD_S = 10.0


def checkpoint_index(path: str) -> int:
    """Tune names a trial's checkpoints checkpoint_000000, checkpoint_000001, ... in the order saved."""
    return int(posixpath.basename(path.rstrip("/")).rsplit("_", 1)[-1])


def saved_latest_checkpoints(trial: Any, trial_ids: set[str]) -> dict[str, int]:
    """For each of `trial_ids`, the index of the latest checkpoint named by the newest experiment
    state in storage (the one `Tuner.restore` reads), found through any trial of the experiment.
    Empty when there is none yet or it cannot be read (say, while Tune is writing it): then
    nothing is deleted this time."""
    fs, experiment = trial.storage.storage_filesystem, trial.storage.experiment_fs_path
    try:
        path = _find_newest_experiment_checkpoint(experiment, fs)
        if path is None:
            return {}
        with fs.open_input_stream(path) as stream:
            state = json.loads(stream.read())
    except (OSError, ValueError):
        return {}
    found = {}
    for trial_json, metadata_json in state.get("trial_data", []):
        trial_id = json.loads(trial_json).get("trial_id")
        if trial_id not in trial_ids:
            continue
        latest = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager.latest_checkpoint_result
        if latest is not None:
            found[trial_id] = checkpoint_index(latest.checkpoint.path)
    return found


class KeepLatestCheckpoint(tune.Callback):
    """Deletes every checkpoint of a trial but its latest, once the saved experiment state names a
    later one, and forgets it in the trial's checkpoint list, so that the result grid and a
    restored experiment never point at a deleted checkpoint."""

    def __init__(self, period_s: float = PRUNE_PERIOD_S) -> None:
        self.period_s = period_s
        self._waiting: dict[str, Any] = {}  # trials holding more than one checkpoint
        self._last, self._wait = -math.inf, period_s

    def __getstate__(self) -> dict[str, Any]:
        return {"period_s": self.period_s}  # Tune pickles its callbacks; trials are not ours to keep

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["period_s"])

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._waiting[trial.trial_id] = trial

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._waiting and time.monotonic() - self._last >= self._wait:
            self.prune(list(self._waiting.values()))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Tune has saved its state for the last time (unless it failed): every trial, including
        # those a resume restored with older checkpoints, keeps its latest alone.
        self.prune(trials)

    def prune(self, trials: list) -> None:
        self._last = time.monotonic()
        several = {t.trial_id: t for t in trials if len(t.run_metadata.checkpoint_manager._checkpoint_results) > 1}
        self._waiting = dict(several)
        if not several:
            return
        start = time.monotonic()
        saved = saved_latest_checkpoints(next(iter(several.values())), set(several))
        self._wait = max(self.period_s, 19 * (time.monotonic() - start))  # a 32 MB state from a bucket is slow
        for trial_id, named in saved.items():
            trial = several[trial_id]
            manager = trial.run_metadata.checkpoint_manager
            latest = manager.latest_checkpoint_result.checkpoint.path
            old = [r for r in manager._checkpoint_results
                   if r.checkpoint.path != latest and checkpoint_index(r.checkpoint.path) < named]
            for result in old:  # one a resume restored into the list may be gone already
                with contextlib.suppress(FileNotFoundError):
                    result.checkpoint.filesystem.delete_dir(result.checkpoint.path)
            manager._checkpoint_results = [r for r in manager._checkpoint_results if all(r is not o for o in old)]
            trial.run_metadata.invalidate_cache()  # the next saved state lists what is left
            if len(manager._checkpoint_results) <= 1:
                self._waiting.pop(trial_id, None)
