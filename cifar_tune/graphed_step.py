"""The training step captured once as a CUDA graph and replayed every step after (train.cuda_graph).

Why: at batch 256 of 32x32 images an AlexNet step is about 150 small kernels; launched one at a time
from Python the GPU waits on the host. A replay launches the whole step at once.

What makes a replay compute the step eager would (read against torch 2.11 and 2.14):
- inputs: each batch is indexed, augmented and normalized eagerly (its crops and flips draw from the
  trainer's own generator, outside the graph), then copied into buffers the graph reads;
- dropout: `torch.cuda.graph` registers the default CUDA generator; before each replay its seed and
  offset are written to device tensors the kernels read, and the offset advances by what the capture
  consumed (CUDAGeneratorState::replay_prologue), so the masks are eager's and the RNG state a
  checkpoint saves after N replays is the one N eager steps leave;
- learning rate: the scheduler steps Python floats as before; the captured fused optimizer reads the
  rate from a one-element fp32 device tensor written before each replay (its kernels read a tensor lr
  as `const float*`: FusedSgdKernel.cu, FusedAdamWKernel.cu). A tensor in the param group instead
  would make the schedulers' arithmetic read it back: a host sync per step;
- optimizer: fused, so its state lives on the device and a step reads nothing back; AdamW is built
  with capturable=True, which its capture check requires; SGD's momentum buffers and Adam's step
  counters are created by the warm-up steps, before capture;
- GradScaler (amp_fp16): with a fused optimizer, step() hands it found_inf and the scale as tensors
  and update() is torch._amp_update_scale_ in place: no `.item()` (torch/amp/grad_scaler.py);
- batch norm's running statistics are updated in place in buffers the graph holds;
- warm-up: the first WARMUP_STEPS steps of each process run eagerly on the capture stream (cuDNN's
  algorithm search, cuBLAS handles, lazy optimizer and scaler state), as torch's "whole network
  capture" example does. They are real steps, so a resumed process trains the same steps.

What differs from eager: the learning rate reaches the update as fp32 instead of a Python double
(a relative difference below 6e-8). Resume is exact within either mode. `Trainer.load` drops the graph
(loading replaces the optimizer's state tensors) and the next step captures again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

WARMUP_STEPS = 3  # eager steps before capture, per process (torch's example uses 3)

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# capture(body) -> replay: records body's device work once and returns what runs it again.
Capture = Callable[[Callable[[], None], "torch.cuda.Stream | None"], Callable[[], None]]


def use_cuda_graph(setting: bool | str, compile: bool, device: torch.device) -> bool:
    """Whether a trial's training step is captured: `train.cuda_graph` (true, false, or "auto": on a
    CUDA device when the model is not compiled, as torch.compile'd kernels inside this capture have
    not been run on a GPU by this project). Never on a CPU, where there is no launch cost to save."""
    if device.type != "cuda":
        return False
    return (not compile) if setting == "auto" else bool(setting)


def capture_cuda_graph(body: Callable[[], None], stream: torch.cuda.Stream | None) -> Callable[[], None]:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        body()
    return graph.replay


class GraphedStep:
    """Runs `step(x, y) -> (loss, correct)` (forward, backward, optimizer and scaler step) eagerly for
    WARMUP_STEPS calls, then captures it once and replays it. The returned tensors of a replayed step
    are the graph's own outputs, overwritten by the next step: copy them out.

    `capture` is for tests: a CPU stand-in that returns the body itself checks everything around the
    capture (buffers, the learning-rate tensor, when it captures) against eager steps."""

    def __init__(self, step: StepFn, optimizer: torch.optim.Optimizer, device: torch.device,
                 capture: Capture = capture_cuda_graph, warmup_steps: int = WARMUP_STEPS) -> None:
        self.step, self.optimizer, self.device = step, optimizer, device
        self.capture, self.warmup_steps = capture, warmup_steps
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.eager_steps = 0
        self.replay: Callable[[], None] | None = None

    @property
    def steps_before_capture(self) -> int:
        """Eager steps still to run before the graph exists (0 once captured)."""
        return 0 if self.replay else max(self.warmup_steps - self.eager_steps, 0) + 1

    def reset(self) -> None:
        """Forget the graph (the optimizer's state tensors were replaced): warm up and capture again."""
        self.replay, self.eager_steps = None, 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.replay is None and self.eager_steps < self.warmup_steps:
            self.eager_steps += 1
            with self._on_capture_stream():
                return self.step(x, y)
        if self.replay is None:
            self._capture(x, y)
        self.x.copy_(x)
        self.y.copy_(y)
        for rate, group in zip(self.rates, self.optimizer.param_groups, strict=False):
            rate.fill_(group["lr"])  # the scheduler's value for this step
        self.replay()
        return self.out

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = torch.empty_like(x), torch.empty_like(y)
        self.rates = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in self.optimizer.param_groups]

        def body() -> None:
            floats = [group["lr"] for group in self.optimizer.param_groups]
            for rate, group in zip(self.rates, self.optimizer.param_groups, strict=False):
                group["lr"] = rate  # what the optimizer's kernels read while captured
            try:
                self.out = self.step(self.x, self.y)
            finally:
                for value, group in zip(floats, self.optimizer.param_groups, strict=False):
                    group["lr"] = value  # the scheduler and checkpoints keep seeing floats

        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        with self._on_capture_stream():
            self.replay = self.capture(body, self.stream)

    @contextlib.contextmanager
    def _on_capture_stream(self) -> Iterator[None]:
        """Run on the side stream the graph is captured on, ordered after and before the main stream
        (torch.cuda.graph's documented warm-up)."""
        if self.stream is None:
            yield
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
