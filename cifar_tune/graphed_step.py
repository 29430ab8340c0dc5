"""The training step captured once as a CUDA graph and replayed every step after (train.cuda_graph).

Contract: on CUDA, a replay computes the step eager would (forward, backward, fused optimizer,
GradScaler), reads nothing back to the host, and leaves the RNG and optimizer state a checkpoint
saves as eager steps would, so resume is exact; the one difference is the learning rate reaching
the update as fp32. `use_cuda_graph` decides where it is used (CUDA only); `Trainer.load` drops a
graph and the next step captures again. Why each part holds, read against torch 2.11 and 2.14
source: docs/training.md, "The CUDA-graph step".
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
