"""One isolated timing block as a Ray task: a fresh Trainer of one precision, warmed up, then
timed for a number of steps (`cifar-tune time`; orchestrator/timing.py schedules the blocks).

Kept apart from the orchestrator so that the fresh worker each block gets imports only the
training loop, not the orchestrator's pandas, Tune and analysis modules.
"""

from __future__ import annotations

from typing import Any

import ray
import torch

from cifar_tune.config import ModelConfig, TrainConfig
from cifar_tune.data import CifarData
from cifar_tune.machine import device_name
from cifar_tune.train import Trainer, pick_device


def _time_block(train: dict[str, Any], model: dict[str, Any], data: CifarData, steps: int, warmup_steps: int,
                gpus: float) -> dict[str, Any]:
    """Images/s of `steps` training steps after `warmup_steps` untimed ones, with where it ran."""
    device = pick_device(gpus)
    trainer = Trainer(TrainConfig.model_validate(train), ModelConfig.model_validate(model), data, device)
    result = trainer.time_steps(steps, warmup_steps)
    return {**result, "device": device_name(device), "threads": torch.get_num_threads(),
            "node_id": ray.get_runtime_context().get_node_id()}


# A fresh worker per block (max_calls=1): no precision inherits another's allocator, caches or CUDA
# context. In the decorator, as Ray ignores max_calls given through .options() (ray issue 47767).
time_block = ray.remote(max_calls=1)(_time_block)
