"""The checkpoint policy (train.checkpoint_every): which epochs save, what a checkpoint weighs, and
what a study will write, told before it starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ray.tune.schedulers.async_hyperband import _Bracket

from cifar_tune.checkpoints import LARGE_STUDY_BYTES, CheckpointSize, asha_rungs, checkpoint_epochs, study_writes
from cifar_tune.config import ConfigError, validate_config
from cifar_tune.data import load_data
from cifar_tune.names import BEST_FILE, STATE_FILE
from cifar_tune.search import plan_experiment
from cifar_tune.train import Trainer


def test_checkpoints_every_k_epochs_at_the_end_and_where_asha_may_stop() -> None:
    assert checkpoint_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert checkpoint_epochs(10, 4) == [4, 8, 10]
    assert checkpoint_epochs(10, 20) == [10]
    assert checkpoint_epochs(10, 4, rungs={1, 3, 9}) == [1, 3, 4, 8, 9, 10]


@pytest.mark.parametrize(("grace", "rf", "max_t"), [(1, 3.0, 30), (2, 3.0, 30), (1, 2.5, 10), (3, 2.0, 50), (1, 4.0, 1)])
def test_asha_rungs_are_the_epochs_ray_asha_decides_at(grace: int, rf: float, max_t: int) -> None:
    """Ray's own bracket: a trial is judged at the first whole epoch at or past each milestone."""
    milestones = [m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs]
    assert {math.ceil(m) for m in milestones} <= asha_rungs(max_t, grace, rf)
    assert asha_rungs(max_t, grace, rf) <= {math.ceil(m) for m in milestones} | {max_t}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_checkpoint_size_derived_from_the_model_matches_the_files(tiny_raw, tmp_path: Path, optimizer: str) -> None:
    config = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 2, "optimizer": optimizer},
                              "model": {"width": 1.0}})  # the study's network: what a user's run writes
    trainer = Trainer(config.train, config.model, load_data(config.data))
    size = CheckpointSize.of(config.model, config.train)
    for epoch, state_bytes in ((1, size.state), (2, size.weights)):  # the last epoch's holds the weights only
        trainer.train_epoch()  # the optimizer's slots exist once it has stepped
        (tmp_path / str(epoch)).mkdir()
        trainer.save(tmp_path / str(epoch))
        assert state_bytes == pytest.approx((tmp_path / str(epoch) / STATE_FILE).stat().st_size, rel=0.002), epoch
        assert size.best == pytest.approx((tmp_path / str(epoch) / BEST_FILE).stat().st_size, rel=0.002), epoch
    assert size.state > (2.5 if optimizer == "adamw" else 1.5) * size.best  # the optimizer's slots
    assert size.weights == size.best and size.last == size.weights + size.best


def test_a_finished_trials_checkpoint_reloads_done_and_refuses_to_train_on(tiny_raw, tmp_path: Path) -> None:
    from cifar_tune.train import CheckpointError

    config = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 1}})
    trainer = Trainer(config.train, config.model, load_data(config.data))
    trainer.train_epoch()
    trainer.save(tmp_path)
    again = Trainer(config.train, config.model, load_data(config.data))
    again.load(tmp_path)  # a trial restored at its last checkpoint: done, nothing left to train
    assert again.epoch == 1 and again.best_val_acc == trainer.best_val_acc
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key
    longer = validate_config({**tiny_raw, "train": {**tiny_raw["train"], "epochs": 3}})
    with pytest.raises(CheckpointError, match="holds no optimizer state: it cannot continue to 3 epochs"):
        Trainer(longer.train, longer.model, load_data(longer.data)).load(tmp_path)


def _writes(tiny_raw, **changes):
    raw = {**tiny_raw, **changes, "train": {**tiny_raw["train"], **changes.get("train", {})}}
    config, plan, _ = plan_experiment(validate_config(raw))
    return study_writes(config, plan), CheckpointSize.of(config.model, config.train)


def test_study_writes_counts_each_trials_checkpoints(tiny_raw) -> None:
    writes, size = _writes(tiny_raw, search={"seed": [0, 1], "epochs": [4, 10]}, train={"checkpoint_every": 4})
    # epochs 4: [4]; epochs 10: [4, 8, 10]; two seeds each; each trial's last checkpoint holds no optimizer state
    assert (writes.trials, writes.checkpoints) == (4, 8)
    assert writes.bytes == 4 * size.last + 4 * size.total
    assert writes.kept == 4 * size.last  # each trial's latest alone (orchestrator/retention.py)
    asha, _ = _writes(tiny_raw, search={"epochs": [9]}, train={"checkpoint_every": 9},
                      tune={"scheduler": "asha", "grace_period": 1, "reduction_factor": 3.0})
    assert asha.checkpoints == 3  # epochs 1 and 3 (rungs) and 9
    assert writes.warning() is None


def test_a_large_study_is_told_what_it_will_write_and_how_to_write_less(tiny_raw) -> None:
    writes, size = _writes(tiny_raw, search={"seed": list(range(100))}, train={"epochs": 30})
    assert writes.bytes == 100 * (29 * size.total + size.last) > LARGE_STUDY_BYTES
    warning = writes.warning()
    assert warning and f"{writes.bytes / 1024**3:.1f} GB written" in warning and "train.checkpoint_every" in warning
    fewer, _ = _writes(tiny_raw, search={"seed": list(range(100))}, train={"epochs": 30, "checkpoint_every": 10})
    assert fewer.bytes == 100 * (2 * size.total + size.last)


def test_checkpoint_every_must_be_positive(tiny_raw) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every"):
        validate_config({**tiny_raw, "train": {**tiny_raw["train"], "checkpoint_every": 0}})
