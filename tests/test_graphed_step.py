"""The training step as a CUDA graph (graphed_step.py), checked on a CPU as far as a CPU can:
where it is chosen, that everything around the capture (static buffers, the learning-rate tensor, the
warm-up, resume) reproduces eager steps, and that the captured step reads nothing back to the host.
benchmarks/gpu_check.py runs the real capture on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cifar_tune import train as train_mod
from cifar_tune.config import ConfigError, validate_config
from cifar_tune.data import load_data
from cifar_tune.errors import CifarTuneError
from cifar_tune.graphed_step import WARMUP_STEPS, use_cuda_graph
from cifar_tune.orchestrator.preflight import preflight
from cifar_tune.search import SearchPlan
from cifar_tune.train import Trainer


class FakeCapture:
    """A CPU stand-in for torch.cuda.graph: "capturing" records the step's body and each replay runs it
    again, as a replay re-runs the captured kernels, reading whatever the buffers hold then."""

    def __init__(self) -> None:
        self.captures = 0

    def __call__(self, body, stream):
        self.captures += 1
        return body


def _trainer(tiny_raw, capture=None, **train) -> Trainer:
    raw = {**tiny_raw, "data": {**tiny_raw["data"], "train_subset": 96},  # 3 steps an epoch
           "train": {**tiny_raw["train"], "precision": "fp32", **train}}
    config = validate_config(raw)
    return Trainer(config.train, config.model, load_data(config.data), capture=capture)


def _same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=False))


def test_the_graph_is_chosen_only_on_cuda() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert not any(use_cuda_graph(setting, False, cpu) for setting in ("auto", True, False))
    assert use_cuda_graph("auto", False, cuda) and use_cuda_graph(True, False, cuda)
    assert not use_cuda_graph(False, False, cuda)
    assert not use_cuda_graph("auto", True, cuda)  # compiled kernels inside this capture: only when asked
    assert use_cuda_graph(True, True, cuda)


def test_a_cpu_trainer_runs_eagerly_by_default_and_refuses_a_forced_graph(tiny_raw) -> None:
    trainer = _trainer(tiny_raw)
    assert not trainer.graphed and trainer.graphed_step is None
    assert "cuda_graph" not in trainer.train_epoch()  # reported only where the step is captured
    with pytest.raises(CifarTuneError, match=r"train\.cuda_graph: true needs a CUDA device"):
        _trainer(tiny_raw, cuda_graph=True)


@pytest.mark.parametrize("searched", [False, True])
def test_a_forced_graph_on_cpu_trials_is_refused_before_ray_starts(tiny_raw, searched: bool) -> None:
    raw = {**tiny_raw, "train": {**tiny_raw["train"], "cuda_graph": True}}
    if searched:
        raw["search"] = {"cuda_graph": [False, True]}
    config = validate_config(raw)
    key = "search.cuda_graph" if searched else "train.cuda_graph"
    with pytest.raises(ConfigError, match=rf"{key}: true captures .* trials train on the CPU"):
        preflight(config, SearchPlan.of(config))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_replayed_steps_are_eager_steps(tiny_raw, optimizer: str, monkeypatch) -> None:
    """With a learning rate fp32 holds exactly, replays give eager's weights bit for bit: the buffers,
    the rate written before each replay and the step around them lose nothing. The optimizer is fused
    in both (the graph needs it; a CPU trainer gets it only when graphed)."""
    capture = FakeCapture()
    train = {"optimizer": optimizer, "lr": 0.0625, "schedule": "constant", "epochs": 3}
    graphed = _trainer(tiny_raw, capture, **train)
    g_history = [graphed.train_epoch() for _ in range(3)]  # one trainer at a time: dropout's RNG is global
    monkeypatch.setattr(train_mod, "fused_optimizer", lambda device, graphed=False: True)
    eager = _trainer(tiny_raw, **train)  # fused as well, but not capturable: a fused step ignores the flag
    e_history = [eager.train_epoch() for _ in range(3)]
    assert graphed.optimizer.defaults["fused"] and eager.optimizer.defaults["fused"] and not eager.graphed
    for g, e in zip(g_history, e_history, strict=False):
        assert g["cuda_graph"] is True
        assert g["train_loss"] == e["train_loss"] and g["val_acc"] == e["val_acc"]
    assert _same_weights(graphed, eager)
    assert capture.captures == 1  # captured once, after WARMUP_STEPS eager steps, then replayed
    assert graphed.graphed_step.eager_steps == WARMUP_STEPS
    assert all(isinstance(group["lr"], float) for group in graphed.optimizer.param_groups)  # what checkpoints hold


def test_a_scheduled_learning_rate_reaches_the_replays(tiny_raw, monkeypatch) -> None:
    """Cosine with warm-up: every replay steps with the scheduler's current rate (to fp32's rounding).
    Both optimizers fused: fused against foreach SGD differs by rounding that training amplifies to
    ~1e-4 in 9 steps, data-dependently (it failed this test once); a stale rate differs by ~4e-2."""
    graphed = _trainer(tiny_raw, FakeCapture(), lr=0.05, warmup_epochs=1.0)
    g_history = [graphed.train_epoch() for _ in range(3)]
    monkeypatch.setattr(train_mod, "fused_optimizer", lambda device, graphed=False: True)
    eager = _trainer(tiny_raw, lr=0.05, warmup_epochs=1.0)
    e_history = [eager.train_epoch() for _ in range(3)]
    assert eager.optimizer.defaults["fused"] and not eager.graphed
    assert [g["lr"] for g in g_history] == [e["lr"] for e in e_history]
    for x, y in zip(graphed.model.parameters(), eager.model.parameters(), strict=False):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)  # the rate's fp32 rounding


def test_resume_under_the_graph_is_exact(tiny_raw, tmp_path: Path) -> None:
    """Three epochs straight, or one, a checkpoint, and two more in a new trainer (which warms up and
    captures again): the same weights, optimizer state and metrics, bit for bit."""
    straight = _trainer(tiny_raw, FakeCapture())
    straight_history = [straight.train_epoch() for _ in range(3)]

    first = _trainer(tiny_raw, FakeCapture())
    first.train_epoch()
    first.save(tmp_path)
    torch.manual_seed(12345)  # a new process starts from other RNG states
    second_capture = FakeCapture()
    second = _trainer(tiny_raw, second_capture)
    second.load(tmp_path)
    resumed = [second.train_epoch() for _ in range(2)]

    assert second_capture.captures == 1  # 3 steps an epoch: warm-up in the first, captured in the second
    assert _same_weights(straight, second)
    assert [r["train_loss"] for r in resumed] == [h["train_loss"] for h in straight_history[1:]]
    assert [r["val_acc"] for r in resumed] == [h["val_acc"] for h in straight_history[1:]]
    momentum = [straight.optimizer.state[p]["momentum_buffer"] for p in straight.model.parameters()]
    assert all(torch.equal(a, second.optimizer.state[p]["momentum_buffer"])
               for a, p in zip(momentum, second.model.parameters(), strict=False))


def test_an_eager_checkpoint_continues_under_the_graph(tiny_raw, tmp_path: Path) -> None:
    """A checkpoint written without the graph (another device, or cuda_graph: false) loads into a graphed
    trainer: the optimizer is switched to fused (and capturable for AdamW) and the graph is made anew."""
    eager = _trainer(tiny_raw, optimizer="adamw", epochs=2)
    eager.train_epoch()
    eager.save(tmp_path)
    graphed = _trainer(tiny_raw, FakeCapture(), optimizer="adamw", epochs=2)
    graphed.load(tmp_path)
    assert all(g["fused"] and g["capturable"] for g in graphed.optimizer.param_groups)
    assert graphed.train_epoch()["epoch"] == 2


# Ops whose result the host must read: on a GPU each one waits for the device, and inside a capture it fails.
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.is_nonzero.default",
              "aten.equal.default", "aten.masked_select.default", "aten._unique2.default"}


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer,scaled", [("sgd", False), ("adamw", False), ("sgd", True), ("adamw", True)])
def test_the_captured_step_reads_nothing_back(tiny_raw, optimizer: str, scaled: bool) -> None:
    """What the graph captures (forward, backward, fused optimizer, GradScaler's step and update) asks the
    host for no value, with and without loss scaling; an unfused optimizer under the scaler does (the
    check can fail). The learning rate is a device tensor there, as in the capture."""
    trainer = _trainer(tiny_raw, FakeCapture(), optimizer=optimizer)
    if scaled:  # amp_fp16's scaler, without fp16 autocast (emulated, so slow, on most CPUs)
        trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)
    idx = torch.arange(trainer.batch_size)
    for _ in range(WARMUP_STEPS):  # the eager warm-up creates the optimizer's and the scaler's state
        trainer._train_step(idx)
    x, y = trainer.train_x[idx].float() / 255, trainer.train_y[idx]  # any inputs of the right shape
    for group in trainer.optimizer.param_groups:
        group["lr"] = torch.tensor(group["lr"], dtype=torch.float32)
    with HostReads() as reads:
        trainer._step(x.contiguous(memory_format=torch.channels_last), y)
    assert reads.seen == []

    if scaled:
        unfused = _trainer(tiny_raw, optimizer=optimizer)
        unfused.scaler = torch.amp.GradScaler("cpu", enabled=True)
        assert not unfused.optimizer.defaults["fused"]
        with HostReads() as reads:
            unfused._step(x.contiguous(memory_format=torch.channels_last), y)
        assert "aten._local_scalar_dense.default" in reads.seen  # GradScaler's _maybe_opt_step
