"""Inference speed of every deployment variant against eager fp32, with each one's accuracy change.

Targets on a 2-core CPU: the best parity-checked variant at least 2.0x eager fp32 at batch 1 and
at least 1.6x at batch 512 (the original study reported 1.14x, timed with data loading inside).

Variants and batch sizes are timed interleaved, round after round (this machine drifts by up to
2x within minutes); the table gives the median over rounds of each p50 latency, and the ratio.
Accuracy change and agreement come from the full parity pass on the test set.

    python benchmarks/inference.py CHECKPOINT_OR_TRIAL_DIR --data ../shared/data --rounds 3 --cold-cache
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.bench import locate_checkpoint, logits_of, parity  # noqa: E402
from cifar_tune.config import ExportConfig  # noqa: E402
from cifar_tune.data import load_cifar10, normalize  # noqa: E402
from cifar_tune.export import build_variants, load_best_model  # noqa: E402
from cifar_tune.meters import latency  # noqa: E402

from common import machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a trial or checkpoint directory (best_model.pt)")
    parser.add_argument("--data", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,64,512")
    parser.add_argument("--min-duration", type=float, default=1.0, help="seconds per variant, batch and round")
    parser.add_argument("--variants", help="comma-separated variant names (default: every one this device runs)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--test-images", type=int, default=None, help="first N test images only (quick runs)")
    parser.add_argument("--cold-cache", action="store_true",
                        help="compile into an empty inductor cache, so build times are what a new machine pays")
    args = parser.parse_args()
    cold_cache = tempfile.TemporaryDirectory() if args.cold_cache else None
    if cold_cache:  # inductor reads this at each cache lookup; nothing has compiled yet in this process
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_cache.name
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = ExportConfig(batch_sizes=batch_sizes, min_duration_s=args.min_duration, min_runs=5, warmup_runs=3)

    checkpoint, _ = locate_checkpoint(args.path)
    model, meta = load_best_model(checkpoint)
    files = load_cifar10(args.data)
    train_x, test_x, test_y = files.train_x, files.test_x[: args.test_images], files.test_y[: args.test_images]
    images = normalize(test_x)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as out:
        variants, failed, skipped = build_variants(model, Path(out), device, normalize(train_x[:512]), args.threads,
                                                   wanted=args.variants.split(",") if args.variants else None)
        reference = logits_of(variants[0], images)
        checks = {v.name: parity(v, images, test_y, reference, settings) for v in variants}

        p50: dict[tuple[str, int], list[float]] = {(v.name, b): [] for v in variants for b in batch_sizes}
        first_call: dict[tuple[str, int], float] = {}  # the real first call: round 1's (compiles, allocates)
        for r in range(args.rounds):
            for batch in batch_sizes:
                for v in variants:
                    row = latency(v, batch, settings)
                    p50[(v.name, batch)].append(row["p50_ms"])
                    first_call.setdefault((v.name, batch), row["first_call_ms"])
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        sizes = {v.name: v.file.stat().st_size / 1e6 if v.file else float("nan") for v in variants}

    print(f"\n{machine_line()}")
    print(f"checkpoint: {checkpoint} (trained {meta.get('precision')}, best val_acc {meta.get('val_acc'):.4f}); "
          f"test set {len(test_y)} images; {args.rounds} rounds interleaved, >= {args.min_duration} s each")
    if failed or skipped:
        print(f"variants that failed to build: {failed}; skipped: {skipped}")
    header = " | ".join(f"bs {b}: p50 ms (x eager)" for b in batch_sizes)
    print(f"\n| variant | runtime | accuracy | change vs eager fp32 | agreement | parity | {header} |")
    print("|---|---|---|---|---|---|" + "---|" * len(batch_sizes))
    best: dict[int, tuple[float, str]] = {}
    for v in variants:
        c = checks[v.name]
        cells = []
        for b in batch_sizes:
            med = statistics.median(p50[(v.name, b)])
            ratio = statistics.median(p50[("eager_fp32", b)]) / med
            cells.append(f"{med:.2f} ({ratio:.2f}x)")
            if c["status"] == "ok" and ratio > best.get(b, (0.0, ""))[0]:
                best[b] = (ratio, v.name)
        print(f"| {v.name} | {v.runtime} | {100 * c['accuracy']:.2f}% | {c['accuracy_change_pp']:+.2f} pp | "
              f"{100 * c['agreement']:.2f}% | {c['status']} | " + " | ".join(cells) + " |")
    print("\nWhat each variant costs before its steady state: build (export, quantize or compile), load, "
          "the first call at each batch size (round 1), the artifact's size; inductor cache "
          + ("empty at the start (--cold-cache)" if cold_cache else "as found (warm if this model compiled before)"))
    print("\n| variant | build s | load s | " + " | ".join(f"first call bs {b} ms" for b in batch_sizes) + " | file MB |")
    print("|---|---|---|" + "---|" * len(batch_sizes) + "---|")
    for v in variants:
        print(f"| {v.name} | {v.build_s:.2f} | {v.load_s:.3f} | "
              + " | ".join(f"{first_call[(v.name, b)]:.1f}" for b in batch_sizes) + f" | {sizes[v.name]:.1f} |")
    print()
    for b, target in ((min(batch_sizes), 2.0), (max(batch_sizes), 1.6)):
        ratio, name = best[b]
        change = checks[name]["accuracy_change_pp"]
        print(f"target at batch {b}: best parity-ok variant >= {target}x eager fp32: {name} {ratio:.2f}x "
              f"(accuracy {change:+.2f} pp), {'met' if ratio >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
