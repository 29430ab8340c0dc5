"""Where a training step spends its time, eager against torch.compile (train.compile), per precision.

benchmarks/train_throughput.py measured compiled training slower than eager under amp_bf16 on a
2-core Xeon; this profiles one Trainer of each kind (the same ones train_throughput.py times) over
a few steps after warm-up, and prints self CPU time per step by op, largest first, with the sum
over convolution ops (forward and backward) apart.

    python benchmarks/profile_training.py --data ../shared/data --steps 5
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import Ours, training_data  # noqa: E402

from common import machine_line  # noqa: E402


def profile_steps(trainer, steps: int, batch_size: int) -> tuple[dict[str, float], float]:
    """(self ms per step of every op, wall ms per step while profiled)."""
    trainer.time_steps(2, warmup_steps=2)  # warm: kernel choice, caches, autotuned paths
    order = torch.randint(len(trainer.train_y), (steps * batch_size,), generator=trainer.data_generator)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for step in range(steps):
            trainer._train_step(order[step * batch_size:(step + 1) * batch_size])
    events = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return events, sum(events.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precisions", default="amp_bf16,fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = training_data(args.data)
    print(machine_line())
    for precision in args.precisions.split(","):
        for compiled in (False, True):
            ours = Ours(data, precision, True, args.batch_size, args.steps + 4, compile=compiled)
            ops, total = profile_steps(ours.trainer, args.steps, args.batch_size)
            conv = sum(ms for op, ms in ops.items() if "conv" in op.lower())
            print(f"\n### {ours.name}: {total:.0f} ms profiled self time per step ({args.batch_size} images), "
                  f"convolutions forward+backward {conv:.0f} ms")
            grouped = collections.Counter(ops)
            for op, ms in grouped.most_common(args.top):
                print(f"- {op[:90]}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
