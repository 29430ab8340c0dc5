"""What a trial writes: at which epochs it checkpoints (`train.checkpoint_every`) and how many bytes
that is, derived from the model and optimizer rather than measured after the fact.

A checkpoint holds the resumable state (weights, optimizer, schedule, RNG) and the best weights so
far; the last epoch's holds the weights only (a finished trial never trains on). A trial
checkpoints every `checkpoint_every` epochs, at its last epoch, and at every epoch where ASHA may
stop it (so a stopped trial keeps its latest weights). docs/training.md gives each setting's bytes
and resume guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cifar_tune.config import ModelConfig, TrainConfig
from cifar_tune.models import build_model

if TYPE_CHECKING:
    from cifar_tune.config import ExperimentConfig
    from cifar_tune.search import SearchPlan

# A study that will write more than this is told so, with its arithmetic, before it starts.
LARGE_STUDY_BYTES = 5 * 1024**3


def asha_rungs(epochs: int, grace_period: int, reduction_factor: float) -> set[int]:
    """The epochs after which ASHA may stop a trial of `epochs` epochs: its milestones
    grace * rf**k (ray.tune.schedulers.async_hyperband), each met at the first whole epoch >= it."""
    rungs, milestone = set(), float(grace_period)
    while milestone <= epochs:
        rungs.add(math.ceil(milestone))
        milestone *= reduction_factor
    return rungs


def checkpoint_epochs(epochs: int, every: int, rungs: set[int] = frozenset()) -> list[int]:
    """The epochs (1-based) after which a trial saves a checkpoint."""
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs or e in rungs]


def trial_rungs(config: ExperimentConfig | dict, epochs: int) -> set[int]:
    """ASHA's stopping epochs for a trial of `epochs` epochs; none under FIFO. Takes the
    experiment config or the dict a trial receives."""
    tune = config["tune"] if isinstance(config, dict) else config.tune.model_dump()
    if tune["scheduler"] != "asha":
        return set()
    return asha_rungs(epochs, min(tune["grace_period"], epochs), tune["reduction_factor"])


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of one checkpoint's two files, from the model's tensors (pickling adds a few KB)."""

    state: int  # weights + optimizer slots (+ schedule, scaler, RNG: a few KB)
    best: int  # the best weights
    weights: int  # the last epoch's state.pt: the weights alone

    @property
    def total(self) -> int:
        return self.state + self.best

    @property
    def last(self) -> int:
        """The checkpoint of a trial's last epoch."""
        return self.weights + self.best

    @classmethod
    def of(cls, model_cfg: ModelConfig, train_cfg: TrainConfig) -> CheckpointSize:
        with torch.device("meta"):  # shapes only: no memory, no initialization
            model = build_model(model_cfg)
        weights = _tensor_bytes(list(model.state_dict().values()))
        params = _tensor_bytes(list(model.parameters()))
        # SGD keeps one momentum buffer per parameter (none without momentum), AdamW two moments.
        slots = 2 if train_cfg.optimizer == "adamw" else (1 if train_cfg.momentum > 0 else 0)
        return cls(state=weights + slots * params, best=weights, weights=weights)


@dataclass(frozen=True)
class StudyWrites:
    """What a study's checkpoints write at most (ASHA may stop trials sooner)."""

    trials: int
    checkpoints: int  # over all trials
    bytes: int  # written over the run
    kept: int  # left at the end: each trial's latest checkpoint, which holds its best weights too

    def describe(self) -> str:
        per = self.bytes / max(self.checkpoints, 1)
        return (f"checkpoints: at most {self.bytes / 1024**3:.1f} GB written, {self.kept / 1024**3:.1f} GB kept "
                f"({self.trials} trial(s), {self.checkpoints} checkpoint(s) of {per / 1024**2:.0f} MB)")

    def warning(self) -> str | None:
        """What to tell the user before a study that writes more than LARGE_STUDY_BYTES."""
        if self.bytes <= LARGE_STUDY_BYTES:
            return None
        return (f"{self.describe()}. To write less, checkpoint every k epochs (train.checkpoint_every: k "
                "writes about 1/k of it; a crash or interrupt then repeats up to k epochs, to the same results)")


def study_writes(config: ExperimentConfig, plan: SearchPlan) -> StudyWrites:
    """Sum over the plan's trials: each trial's checkpoint count times its checkpoint size (grid
    values count; a sampled `epochs` counts as its upper bound, other sampled keys as configured)."""
    sampled = {e.field for e in plan.entries if not e.is_grid}
    sizes: dict[tuple, CheckpointSize] = {}
    checkpoints = total = kept = 0
    for trial in plan.trials:
        fixed = {k: v for k, v in trial.items() if k not in sampled}
        train_cfg = config.train.model_copy(update={k: v for k, v in fixed.items() if k in TrainConfig.model_fields})
        model_cfg = config.model.model_copy(update={k: v for k, v in fixed.items() if k in ModelConfig.model_fields})
        epochs = train_cfg.epochs if "epochs" in fixed else plan.max_epochs
        key = (tuple(model_cfg.model_dump().items()), train_cfg.optimizer, train_cfg.momentum > 0)
        size = sizes.setdefault(key, CheckpointSize.of(model_cfg, train_cfg))
        count = len(checkpoint_epochs(epochs, train_cfg.checkpoint_every, trial_rungs(config, epochs)))
        checkpoints += count
        total += (count - 1) * size.total + size.last
        kept += size.last  # the latest (the last epoch's): orchestrator/retention.py deletes the rest
    return StudyWrites(len(plan.trials), checkpoints, total, kept)
