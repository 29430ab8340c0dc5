"""Training images/s: this project's training step against the original study's way of training.

Reference (how the study did it): torchvision CIFAR10 + PIL transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader, fp32, NCHW.
Ours: cifar_tune's Trainer (uint8 tensors, tensor-op augmentation on the device), in fp32 NCHW,
fp32 channels_last, and amp_bf16 channels_last. Same model (AlexNet, batch norm), optimizer, loss.

Variants run interleaved, round after round, because this machine's speed drifts by up to 2x
within minutes; medians and ratios are what to read. A 2048x2048 matmul measured in every round
gives the achieved GFLOP/s a yardstick (training ~ 3x the forward FLOPs).

    python benchmarks/train_throughput.py --data ../shared/data --rounds 3 --steps 20 [--compile]
    python benchmarks/train_throughput.py --smoke-test      # seconds on any CPU: generated data, narrow model

--compile adds each precision trained through torch.compile (train.compile), compile time printed apart.
amp_bf16 is timed even where this CPU emulates bf16 (the run says so): on an AVX2-only CPU that is ~20x
slower, which is why --smoke-test trains SMOKE_MODEL's narrow AlexNet against a 256x256 matmul.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.config import ModelConfig, TrainConfig  # noqa: E402
from cifar_tune.data import MEAN, STD, CifarData, batches_dir, load_cifar10, torchvision_cifar10  # noqa: E402
from cifar_tune.models import AlexNet, forward_flops_per_image  # noqa: E402
from cifar_tune.precision import device_problem  # noqa: E402
from cifar_tune.train import Trainer  # noqa: E402

from common import SMOKE_MODEL, data_or_smoke, machine_line, matmul_gflops  # noqa: E402


class Reference:
    """The original study's loop: DataLoader over PIL images, fp32, NCHW."""

    name = "reference: DataLoader + PIL, fp32 NCHW"

    def __init__(self, root: Path, batch_size: int, workers: int, model: ModelConfig) -> None:
        augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        dataset = torchvision_cifar10(root, train=True, transform=augment)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                 drop_last=True, persistent_workers=workers > 0)
        self.batches = iter(self.loader)
        self.model = AlexNet(dropout=model.dropout, batch_norm=model.batch_norm, width=model.width)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                         weight_decay=5e-4)
        self.batch_size = batch_size

    def images_per_s(self, steps: int) -> float:
        self.model.train()
        start = time.perf_counter()
        for _ in range(steps):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            loss = F.cross_entropy(self.model(x), y, label_smoothing=0.1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return steps * self.batch_size / (time.perf_counter() - start)


class Ours:
    """cifar_tune's Trainer, timed on its own training pass (train_images_per_s)."""

    def __init__(self, data: CifarData, precision: str, channels_last: bool, batch_size: int, steps: int,
                 model: ModelConfig, compile: bool = False) -> None:
        self.name = (f"cifar-tune: {precision}, {'channels_last' if channels_last else 'NCHW'}, tensor aug"
                     + (", torch.compile" if compile else ""))
        n = steps * batch_size
        small = CifarData(data.train_x[:n], data.train_y[:n], data.test_x[:batch_size], data.test_y[:batch_size],
                          data.test_x[:batch_size], data.test_y[:batch_size], data.classes, data.checksums_ok)
        # allow_slow_precision: measuring a precision this CPU is thought to run badly is this script's job
        # (main() prints the verdict); the Trainer would otherwise refuse it.
        cfg = TrainConfig(precision=precision, channels_last=channels_last, batch_size=batch_size,
                          epochs=1000, eval_batch_size=batch_size, compile=compile, allow_slow_precision=True)
        self.trainer = Trainer(cfg, model, small)  # with compile: compiled here, timed as compile_time_s

    def images_per_s(self, steps: int) -> float:
        return self.trainer.train_epoch()["train_images_per_s"]


def training_data(folder: str) -> CifarData:
    """The whole training split to train on (no validation split: nothing is evaluated here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = load_cifar10(folder)
    return CifarData(files.train_x, files.train_y, files.train_x[:0], files.train_y[:0], files.test_x, files.test_y,
                     files.classes, files.checksums_ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--smoke-test", action="store_true", help="seconds on any CPU: generated data, a narrow "
                        "model, a 256x256 matmul, 1 round of 2 steps at batch 16 on one thread")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="training steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action="store_true",
                        help="also each precision trained through torch.compile (train.compile), side by side")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    folder = data_or_smoke(parser, args, scratch)
    if args.smoke_test:
        args.rounds, args.steps, args.batch_size, args.workers, args.threads = 1, 2, 16, 0, 1
    model = ModelConfig(**SMOKE_MODEL) if args.smoke_test else ModelConfig()
    matmul_n = 256 if args.smoke_test else 2048
    torch.set_num_threads(args.threads)

    data = training_data(folder)
    root = batches_dir(folder).parent
    problem = device_problem("amp_bf16", "cpu")
    if problem:  # timed anyway: whether it really is slow here is what this run finds out
        print(f"note: cifar-tune would leave amp_bf16 out on this CPU: {problem}", flush=True)
    variants = [Reference(root, args.batch_size, args.workers, model),
                Ours(data, "fp32", False, args.batch_size, args.steps, model),
                Ours(data, "fp32", True, args.batch_size, args.steps, model),
                Ours(data, "amp_bf16", True, args.batch_size, args.steps, model)]
    if args.compile:
        variants += [Ours(data, "fp32", True, args.batch_size, args.steps, model, compile=True),
                     Ours(data, "amp_bf16", True, args.batch_size, args.steps, model, compile=True)]
        for v in variants[-2:]:
            print(f"{v.name}: compiled in {v.trainer.compile_time_s:.1f} s (not in any img/s below)", flush=True)
    for v in variants:  # warm-up: first batches, allocator, oneDNN kernel choice
        v.images_per_s(3 if isinstance(v, Reference) else args.steps)

    speeds: dict[str, list[float]] = {v.name: [] for v in variants}
    matmul: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        matmul["fp32"].append(matmul_gflops(torch.float32, n=matmul_n))
        matmul["bf16"].append(matmul_gflops(torch.bfloat16, n=matmul_n))
        for v in variants:
            speeds[v.name].append(v.images_per_s(args.steps))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{s[-1]:.0f}" for s in speeds.values()), flush=True)

    ref = statistics.median(speeds[variants[0].name])
    flops_per_image = forward_flops_per_image(variants[0].model)  # training ~ 3x forward (forward, two backward GEMMs)
    print(f"\n{machine_line()}")
    print(f"batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, interleaved; "
          f"reference DataLoader workers: {args.workers}\n")
    print("| variant | img/s median (min-max) | vs reference | achieved GFLOP/s |")
    print("|---|---|---|---|")
    for name, values in speeds.items():
        med = statistics.median(values)
        gflops = med * 3 * flops_per_image / 1e9
        print(f"| {name} | {med:.0f} ({min(values):.0f}-{max(values):.0f}) | {med / ref:.2f}x | {gflops:.0f} |")
    print(f"\n{matmul_n}x{matmul_n} matmul in the same rounds: fp32 {statistics.median(matmul['fp32']):.0f} GFLOP/s, "
          f"bf16 {statistics.median(matmul['bf16']):.0f} GFLOP/s (medians)")
    best = statistics.median(speeds[variants[3].name]) / ref
    print(f"target: amp_bf16 + channels_last >= 2.0x the reference: {best:.2f}x, "
          f"{'met' if best >= 2.0 else 'NOT met'}")
    for compiled in variants[4:]:
        eager_name = compiled.name.removesuffix(", torch.compile")
        ratio = statistics.median(speeds[compiled.name]) / statistics.median(speeds[eager_name])
        print(f"torch.compile vs eager, {eager_name.removeprefix('cifar-tune: ')}: {ratio:.2f}x "
              f"(compile {compiled.trainer.compile_time_s:.0f} s, once per process)")


if __name__ == "__main__":
    main()
