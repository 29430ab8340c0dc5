"""The Ray Tune function trainable: a Trainer driven epoch by epoch, reporting through `ray.tune`
after every epoch, checkpointing at the epochs cifar_tune/checkpoints.py names
(`train.checkpoint_every`), and resuming from `ray.tune.get_checkpoint()` when Tune restarts or
restores the trial.
"""

from __future__ import annotations

import tempfile
from typing import Any

import ray
from ray import tune

from cifar_tune.checkpoints import checkpoint_epochs, trial_rungs
from cifar_tune.config import ModelConfig, ResourcesConfig, TrainConfig
from cifar_tune.data import CifarData
from cifar_tune.faults import Faults
from cifar_tune.names import SHARING_METRIC
from cifar_tune.train import Trainer, pick_device
from cifar_tune.trainables.occupancy import Occupancy


class InjectedFailure(RuntimeError):
    """Raised by the tests' `fail_at_epoch` fault (cifar_tune/faults.py), to test recovery from checkpoints."""


def train_cifar(config: dict[str, Any], data: CifarData, faults: Faults | None = None) -> None:
    """Train one trial. `config` is the experiment config with this trial's search values filled in;
    `data` arrives once per experiment through the object store (`tune.with_parameters`). Each epoch
    also records how many trials shared its device (occupancy.py), where the run keeps a ledger.
    `faults`: what the tests inject (cifar_tune/faults.py); none otherwise."""
    train_cfg = TrainConfig.model_validate(config["train"])
    model_cfg = ModelConfig.model_validate(config["model"])
    faults = faults or Faults()
    device = pick_device(ResourcesConfig.model_validate(config["resources"]).gpus_per_trial)
    trainer = Trainer(train_cfg, model_cfg, data, device)
    node_id = ray.get_runtime_context().get_node_id()  # with Tune's node_ip and hostname: where it ran
    occupancy = Occupancy(tune.get_context().get_trial_id(), device.type)

    saved_after = set(checkpoint_epochs(train_cfg.epochs, train_cfg.checkpoint_every,
                                        trial_rungs(config, train_cfg.epochs)))
    resumed = False
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(folder)
        resumed = True

    while trainer.epoch < train_cfg.epochs:
        occupancy.epoch_starts()
        faults.hold()
        metrics: dict[str, Any] = trainer.train_epoch()
        sharing = occupancy.epoch_ends()
        if sharing is not None:
            metrics[SHARING_METRIC] = sharing
        if trainer.epoch == train_cfg.epochs:
            metrics.update(trainer.test())
        metrics["device"] = str(device)
        metrics["node_id"] = node_id
        if trainer.epoch in saved_after:
            with tempfile.TemporaryDirectory() as folder:
                trainer.save(folder)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        else:  # a restart replays the epochs since the last checkpoint, to the same numbers
            tune.report(metrics)
        last_epoch = trainer.epoch == train_cfg.epochs
        if not resumed and faults.fail_now(trainer.epoch, last_epoch, tune.get_context().get_trial_dir()):
            raise InjectedFailure(f"fail_at_epoch: failing after epoch {trainer.epoch} as the test asked")
        faults.pause(last_epoch)
