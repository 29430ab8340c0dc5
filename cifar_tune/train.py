"""The training loop of one trial, with no Ray in it.

`Trainer` owns everything a trial changes as it runs (weights, optimizer,
schedule, grad scaler, the best weights so far, every RNG) and can save all of
it and load it back, so a run stopped after any epoch continues bit-for-bit.
The Tune trainable (trainables/trainable.py) and the benchmarks drive it epoch by epoch.

Data stays on the training device as uint8; each batch is indexed, augmented
and normalized there, so there is no DataLoader and no host-to-device copy per
step.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifar_tune.config import ModelConfig, TrainConfig
from cifar_tune.data import CifarData, augment, normalize
from cifar_tune.energy import EnergyMeter
from cifar_tune.errors import CifarTuneError
from cifar_tune.graphed_step import Capture, GraphedStep, capture_cuda_graph, use_cuda_graph
from cifar_tune.models import build_model
from cifar_tune.names import BEST_FILE, PREDICTIONS_FILE, STATE_FILE
from cifar_tune.precision import device_problem, policy

CHECK_EVERY = 20  # steps between loss checks: each one syncs the GPU, so not every step


class DivergedError(RuntimeError):
    """The loss became inf or NaN; training on would only produce garbage."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not a cifar-tune checkpoint."""


def _load_checkpoint_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, missing file, unpickling refused, ...
        raise CheckpointError(
            f"checkpoint file {path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Delete its checkpoint folder to resume from the one before, or start the experiment again") from None


class PrecisionUnavailableError(CifarTuneError):
    """The trial landed on a device that cannot run its precision well."""


def pick_device(gpus_requested: float) -> torch.device:
    """CUDA when the trial asked for a GPU share and torch can see one; otherwise CPU.

    Decided from torch, not from Ray's resource numbers: a node may advertise
    a GPU that this process cannot use.
    """
    return torch.device("cuda" if gpus_requested > 0 and torch.cuda.is_available() else "cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    if deterministic:
        # cuBLAS refuses deterministic mode without a fixed workspace; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device: covers dropout and weight init
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def _rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        # weights_only loading accepts tensors, not numpy arrays
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": data_generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    data_generator.set_state(state["data"])


def fused_optimizer(device: torch.device, graphed: bool = False) -> bool | None:
    """Whether the optimizer runs fused: on CUDA, for every precision alike (the arms compare like with
    like), and wherever the step is captured as a graph (graphed_step.py). Under amp_fp16 it is what
    keeps the GPU ahead of the host: GradScaler.step hands a fused optimizer its found-inf flag as a
    tensor, where an unfused one makes it call `.item()`, a host/GPU sync every step
    (torch/amp/grad_scaler.py, `_maybe_opt_step`). On a CPU there is no such overlap to lose, and the
    default (foreach) keeps CPU results as they were measured. None: torch's default."""
    return True if device.type == "cuda" or graphed else None


class Trainer:
    """Trains AlexNet on CIFAR-10 for one (train, model) config, one epoch per call."""

    def __init__(self, train_cfg: TrainConfig, model_cfg: ModelConfig, data: CifarData,
                 device: torch.device | str = "cpu", capture: Capture | None = None) -> None:
        """`capture`: for tests, a stand-in for CUDA graph capture that makes a CPU trainer take the
        graphed path; otherwise train.cuda_graph and the device decide (graphed_step.use_cuda_graph)."""
        self.cfg = train_cfg
        self.model_cfg = model_cfg
        self.device = torch.device(device)
        self.policy = policy(train_cfg.precision)
        problem = device_problem(train_cfg.precision, str(self.device))
        if problem and not train_cfg.allow_slow_precision:
            raise PrecisionUnavailableError(
                f"precision {train_cfg.precision} on {self.device}: {problem} "
                "(set train.allow_slow_precision: true to run it anyway)")

        if train_cfg.cuda_graph is True and self.device.type != "cuda" and capture is None:
            raise CifarTuneError(f"train.cuda_graph: true needs a CUDA device; this trial got {self.device} "
                                 "(set train.cuda_graph: auto to capture only where a GPU is used)")
        self.graphed = capture is not None or use_cuda_graph(train_cfg.cuda_graph, train_cfg.compile, self.device)

        seed_everything(train_cfg.seed, train_cfg.deterministic)
        self.policy.apply_backend_flags()
        # Shuffling and augmentation draw from their own generator on the device,
        # so they do not depend on how many random numbers dropout consumed.
        self.data_generator = torch.Generator(device=self.device).manual_seed(train_cfg.seed)

        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        self.train_x, self.train_y = to(data.train_x), to(data.train_y)
        self.val_x, self.val_y = to(data.val_x), to(data.val_y)
        self.test_x, self.test_y = to(data.test_x), to(data.test_y)

        self.model = build_model(model_cfg, train_cfg.channels_last).to(self.device)
        # What a training step calls: the model itself, or (train.compile) torch.compile of it, which
        # shares its parameters, so the optimizer, checkpoints and evaluation see one set of weights.
        if train_cfg.compile:  # a reused worker (Tune's reuse_actors) must not carry earlier trials'
            torch._dynamo.reset()  # graphs toward dynamo's recompile limit, past which it runs eager
        self.step_model: torch.nn.Module = torch.compile(self.model) if train_cfg.compile else self.model
        self.optimizer = self._make_optimizer()
        n = len(self.train_y)
        # Drop the ragged last batch (BatchNorm dislikes tiny batches), but always take at least one.
        self.batch_size = min(train_cfg.batch_size, n)
        self.steps_per_epoch = n // self.batch_size
        self.scheduler = self._make_scheduler(self.steps_per_epoch * train_cfg.epochs)
        self.scaler = self.policy.make_scaler(self.device.type)
        self.energy = EnergyMeter.for_device(self.device)  # readings are None where the hardware does not tell

        self.test_predictions: np.ndarray | None = None  # per test image, set by test()
        self.epoch = 0  # epochs completed
        self.training_time_s = 0.0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.compile_time_s = self._compile_now() if train_cfg.compile else 0.0
        # Forward, backward and the optimizer/scaler step, captured as one CUDA graph after a warm-up.
        self.graphed_step = (GraphedStep(self._step, self.optimizer, self.device, capture or capture_cuda_graph)
                             if self.graphed else None)

    # ------------------------------------------------------------------ setup

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        fused = fused_optimizer(self.device, self.graphed)
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum,
                                   nesterov=c.nesterov and c.momentum > 0, weight_decay=c.weight_decay, fused=fused)
        # capturable: AdamW refuses to be captured without it (a fused step computes the same either way).
        return torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=(c.momentum, 0.999),
                                 weight_decay=c.weight_decay, fused=fused, capturable=self.graphed)

    def _make_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        sched = torch.optim.lr_scheduler
        c = self.cfg
        if c.schedule == "onecycle":
            return sched.OneCycleLR(self.optimizer, max_lr=c.lr, total_steps=total_steps, pct_start=0.25,
                                    cycle_momentum=False)
        if c.schedule == "constant":
            return sched.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        warmup = min(int(c.warmup_epochs * self.steps_per_epoch), total_steps - 1)
        cosine = sched.CosineAnnealingLR(self.optimizer, T_max=total_steps - warmup)
        if warmup == 0:
            return cosine
        ramp = sched.LinearLR(self.optimizer, start_factor=0.1, total_iters=warmup)
        return sched.SequentialLR(self.optimizer, [ramp, cosine], milestones=[warmup])

    def _compile_now(self) -> float:
        """Compile the training step (forward and backward) before the first epoch, so its cost is
        reported apart from epoch times: one step on the first training images whose effects are all
        undone (weights and batch-norm statistics, gradients, RNG), so the run that follows is the
        one it would have been. Returns the seconds it took."""
        start = time.perf_counter()
        saved, rng = copy.deepcopy(self.model.state_dict()), _rng_state(self.data_generator)
        x = normalize(self.train_x[:self.batch_size], self.cfg.channels_last)
        with self.policy.autocast(self.device.type):
            loss = F.cross_entropy(self.step_model(x), self.train_y[:self.batch_size])
        loss.backward()
        self._sync()
        self.model.load_state_dict(saved)
        self.optimizer.zero_grad(set_to_none=True)
        _set_rng_state(rng, self.data_generator)  # the same states a checkpoint saves and restores
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ training

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training set, then validation. Returns the epoch's metrics."""
        self.model.train()
        bs, steps = self.batch_size, self.steps_per_epoch
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros(steps, device=self.device, dtype=torch.long)
        self._sync()
        start, energy_start = time.perf_counter(), self.energy.read()
        order = torch.randperm(len(self.train_y), generator=self.data_generator, device=self.device)
        for step in range(steps):
            losses[step], correct[step] = self._train_step(order[step * bs:(step + 1) * bs])
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                self._check_finite(losses, step + 1)
        self._sync()
        train_time = time.perf_counter() - start

        val_loss, val_acc = self.evaluate(self.val_x, self.val_y)
        epoch_time = time.perf_counter() - start
        energy_j = self.energy.joules_since(energy_start)  # train + validation, like epoch_time_s
        self.epoch += 1
        self.training_time_s += epoch_time
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return {
            "epoch": self.epoch,
            "train_loss": losses.mean().item(),
            "train_acc": correct.sum().item() / (steps * bs),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time,
            "train_images_per_s": steps * bs / train_time,
            "training_time_s": self.training_time_s,
            **({"energy_j": energy_j, "images_per_j": steps * bs / energy_j} if energy_j else {}),
            **({"compile_time_s": self.compile_time_s} if self.cfg.compile else {}),  # this process's compile
            **({"cuda_graph": True} if self.graphed else {}),  # the step captured once and replayed
        }

    def _train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the training images `idx`; (loss, correct predictions), on the device."""
        x = normalize(augment(self.train_x[idx], self.data_generator), self.cfg.channels_last)
        y = self.train_y[idx]
        loss, correct = (self.graphed_step or self._step)(x, y)
        self.scheduler.step()  # Python floats, outside any graph
        return loss, correct

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, optimizer and scaler step: all device work, nothing read back, so that
        it can be captured as a CUDA graph."""
        with self.policy.autocast(self.device.type):
            logits = self.step_model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), (logits.argmax(1) == y).sum()

    def time_steps(self, steps: int, warmup_steps: int = 0) -> dict[str, float]:
        """Training speed alone: `warmup_steps` untimed steps (kernel choice, caches), then `steps`
        timed ones, synchronized at both ends. For isolated timing (cifar-tune time): the trainer is
        a throwaway, as the steps change its weights and schedule outside any epoch."""
        bs = self.batch_size
        if self.graphed_step:  # the capture itself is not a step to time
            warmup_steps = max(warmup_steps, self.graphed_step.steps_before_capture)
        # A schedule long enough for these steps (OneCycleLR refuses to step past its end).
        self.scheduler = self._make_scheduler(max(warmup_steps + steps + 1, self.steps_per_epoch * self.cfg.epochs))
        order = torch.randint(len(self.train_y), ((warmup_steps + steps) * bs,), generator=self.data_generator,
                              device=self.device)
        for step in range(warmup_steps):
            self._train_step(order[step * bs:(step + 1) * bs])
        self._sync()
        start, energy_start = time.perf_counter(), self.energy.read()
        losses = torch.zeros(steps, device=self.device)
        for step in range(warmup_steps, warmup_steps + steps):
            losses[step - warmup_steps] = self._train_step(order[step * bs:(step + 1) * bs])[0]
        self._sync()
        seconds = time.perf_counter() - start
        energy_j = self.energy.joules_since(energy_start)
        self._check_finite(losses, steps)
        return {"steps": steps, "batch_size": bs, "seconds": seconds, "cuda_graph": self.graphed,
                "images_per_s": steps * bs / seconds,
                "energy_j": energy_j, "images_per_j": steps * bs / energy_j if energy_j else None,
                "energy_source": self.energy.describe()}

    def _check_finite(self, losses: torch.Tensor, upto: int) -> None:
        bad = ~torch.isfinite(losses[:upto])
        if bad.any():
            step = int(bad.nonzero()[0]) + 1
            raise DivergedError(
                f"diverged at epoch {self.epoch + 1}, step {step}: loss is {losses[step - 1].item()} "
                f"(precision {self.cfg.precision}, lr {self.cfg.lr})")

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def _logits(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        model.eval()
        out = []
        for i in range(0, len(images), self.cfg.eval_batch_size):
            x = normalize(images[i:i + self.cfg.eval_batch_size], self.cfg.channels_last)
            with self.policy.autocast(self.device.type):
                out.append(model(x).float())
        return torch.cat(out)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor,
                 model: torch.nn.Module | None = None) -> tuple[float, float]:
        """(mean cross-entropy without smoothing, accuracy) of `model` (default: current weights)."""
        logits = self._logits(model or self.model, images)
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()

    def best_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.best_state)
        return model

    def test(self) -> dict[str, float]:
        """Test-set metrics of the best-validation weights. test_time_s times one inference pass over
        the test set already on the device (normalize + forward, no data loading), after a warm-up pass.
        Keeps each image's predicted class (`test_predictions`), saved with the next checkpoint, so
        precisions can be compared image by image."""
        model = self.best_model()
        logits = self._logits(model, self.test_x)  # also warms up kernels
        test_loss = F.cross_entropy(logits, self.test_y).item()
        predicted = logits.argmax(1)
        test_acc = (predicted == self.test_y).float().mean().item()
        self.test_predictions = np.stack([predicted.cpu().numpy(), self.test_y.cpu().numpy()]).astype(np.uint8)
        self._sync()
        start = time.perf_counter()
        self._logits(model, self.test_x)
        self._sync()
        return {"test_loss": test_loss, "test_acc": test_acc, "test_time_s": time.perf_counter() - start,
                "energy_source": self.energy.describe()}

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: str | Path) -> None:
        """state.pt: the weights and where training stands; until the last epoch also what training
        on needs (optimizer, schedule, grad scaler, RNG), which a finished trial never reads again.
        best_model.pt: the best-validation weights, with what an export needs to rebuild the model."""
        folder = Path(folder)
        state: dict[str, Any] = {"epoch": self.epoch, "training_time_s": self.training_time_s,
                                 "model": self.model.state_dict()}
        if self.epoch < self.cfg.epochs:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict(), rng=_rng_state(self.data_generator))
        torch.save(state, folder / STATE_FILE)
        torch.save({
            "state_dict": self.best_state,
            "val_acc": self.best_val_acc,
            "epoch": self.best_epoch,
            "precision": self.cfg.precision,
            "model_config": self.model_cfg.model_dump(),
            "channels_last": self.cfg.channels_last,
        }, folder / BEST_FILE)
        if self.test_predictions is not None:  # rows: predicted class, true class; one column per test image
            np.save(folder / PREDICTIONS_FILE, self.test_predictions, allow_pickle=False)

    def load(self, folder: str | Path) -> None:
        """Continue from a checkpoint folder. An unreadable file stops with CheckpointError naming
        it: never a silent restart from epoch 0."""
        folder = Path(folder)
        state, best = (_load_checkpoint_file(folder / name) for name in (STATE_FILE, BEST_FILE))
        self.model.load_state_dict(state["model"])
        self.epoch = state["epoch"]
        self.training_time_s = state["training_time_s"]
        self.best_state = best["state_dict"]
        self.best_val_acc, self.best_epoch = best["val_acc"], best["epoch"]
        if "optimizer" not in state:  # the trial's last epoch: it is done, nothing to train on with
            if self.epoch < self.cfg.epochs:
                raise CheckpointError(f"checkpoint {folder} was saved after the last of {state['epoch']} epoch(s) and "
                                      f"holds no optimizer state: it cannot continue to {self.cfg.epochs} epochs")
            return
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint from another device carries its own choice
            group["fused"] = fused_optimizer(self.device, self.graphed)
            if self.cfg.optimizer == "adamw":
                group["capturable"] = self.graphed
        if self.graphed_step:
            self.graphed_step.reset()  # the optimizer's state tensors were replaced: capture again
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.data_generator)
