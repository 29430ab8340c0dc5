"""Where each torch deployment form spends its time on this CPU, op by op, beside ONNX Runtime.

Issue 11 asks, where a new form (torch.compile, AOTInductor) loses to an old one (TorchScript,
ONNX Runtime), to say why from a profile rather than a guess. This script times each form
unprofiled (median of interleaved rounds), then profiles it: torch.profiler for the torch forms,
ONNX Runtime's own profiler for onnx_fp32. Self time per call is grouped by what the op does:

    conv        convolutions (aten, oneDNN/mkldnn, inductor's external conv calls)
    matmul      the classifier's linear layers (addmm, mkl/oneDNN linear)
    pool/relu   pooling and activations when they run as separate ops
    copy        layout changes and copies (contiguous, to/from channels_last or mkldnn, clone)
    generated   time inside a compiled graph that no named op accounts for: inductor's own C++
                kernels (fused pointwise, pooling) and the graph wrapper; TorchScript's oneDNN
                convolutions, which run inside its frozen graph's `forward` unnamed
    other       everything else named
    unseen      unprofiled ms per call minus the profiled total, when positive: work the profiler
                does not see, such as AOTInductor's generated kernels (an estimate: the profiler
                adds its own overhead to what it sees)

`compiled_frozen` is `compiled` with inductor's freezing (export.py), the recipe inductor's
documentation gives for CPU inference; `aoti_again` loads the `aoti` package a second time and is
timed as a separate form, so the gap between the two is this run's noise floor. (AOTInductor with
`inductor_configs={"freezing": True}` generates the very same code on torch 2.14, so there is no
frozen AOTI form.)

    python benchmarks/profile_variants.py CHECKPOINT_OR_TRIAL_DIR --rounds 3
    python benchmarks/profile_variants.py --smoke-test     # an untrained model, batch 1 and 8, seconds of work
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cifar_tune.bench import locate_checkpoint  # noqa: E402
from cifar_tune.export import (  # noqa: E402
    AotiVariant,
    CompiledVariant,
    EagerVariant,
    OrtVariant,
    TorchScriptVariant,
    Variant,
    load_best_model,
    save_aoti,
    save_onnx,
    save_torchscript,
)
from cifar_tune.models import AlexNet  # noqa: E402

from common import machine_line  # noqa: E402

CATEGORIES = ("conv", "matmul", "pool/relu", "copy", "generated", "other")


def category(op: str) -> str:
    """The group of a profiler event or ONNX Runtime op type (see the module docstring)."""
    name = op.lower()
    if "conv" in name:
        return "conv"
    if any(k in name for k in ("addmm", "linear", "gemm", "matmul", "aten::mm", "fusedmatmul")):
        return "matmul"
    if any(k in name for k in ("pool", "relu", "clamp")):
        return "pool/relu"
    if any(k in name for k in ("copy", "contiguous", "clone", "to_dense", "to_mkldnn", "reorder", "transpose",
                               "reshape", "flatten", "view", "as_strided", "empty")):
        return "copy"
    # TorchScript's frozen graph runs its oneDNN convolutions inside ops the profiler does not name:
    # their time is the self time of `forward`.
    if any(k in name for k in ("compiled", "inductor", "cpp_fused", "graph", "aoti", "call ", "forward")):
        return "generated"
    return "other"


def wall_ms(variant: Variant, x: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        variant.run(x)
    return 1000 * (time.perf_counter() - start) / calls


def torch_profile(variant: Variant, x: Any, calls: int) -> dict[str, float]:
    """Self CPU time per call (ms) of every op torch.profiler records over `calls` calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            variant.run(x)
    return {e.key: e.self_cpu_time_total / 1000 / calls for e in prof.key_averages() if e.self_cpu_time_total > 0}


def ort_profile(path: Path, threads: int, x: Any, calls: int) -> dict[str, float]:
    """Time per call (ms) of every op type ONNX Runtime's own profiler records (its kernel events)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(3):  # warm-up, as for the torch forms; dropped below by counting only the last calls
            session.run(None, {name: x})
        mark = time.perf_counter()
        for _ in range(calls):
            session.run(None, {name: x})
        elapsed = time.perf_counter() - mark
        events = json.loads(Path(session.end_profiling()).read_text())
    # The warm-up runs are profiled too: keep the kernel events of the last `calls` model runs.
    runs = [e for e in events if e.get("name") == "model_run"]
    first_ts = runs[-calls]["ts"] if len(runs) >= calls else 0
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_ts:
            per_op[f"ort::{e['args']['op_name']}"] += e["dur"] / 1000 / calls
    per_op["ort::(session overhead)"] = max(0.0, 1000 * elapsed / calls - sum(per_op.values()))
    return dict(per_op)


def build(model: torch.nn.Module, out: Path, threads: int, wanted: list[str]) -> dict[str, Any]:
    """The forms to compare, each built the way export.py builds it, plus `aoti_again`."""
    cpu = torch.device("cpu")
    forms: dict[str, Any] = {}
    build_s: dict[str, float] = {}

    def timed(name: str, make: Any) -> None:
        if name in wanted:
            start = time.perf_counter()
            forms[name] = make()
            build_s[name] = time.perf_counter() - start

    timed("eager_fp32", lambda: EagerVariant("eager_fp32", copy.deepcopy(model), cpu))
    timed("eager_channels_last", lambda: EagerVariant("eager_channels_last", copy.deepcopy(model), cpu,
                                                      channels_last=True))
    timed("torchscript", lambda: TorchScriptVariant(save_torchscript(copy.deepcopy(model), out / "model.pt"), cpu))
    timed("compiled", lambda: CompiledVariant("compiled", copy.deepcopy(model), cpu))
    timed("compiled_frozen", lambda: CompiledVariant("compiled_frozen", copy.deepcopy(model), cpu,
                                                     freezing=True))

    timed("aoti", lambda: AotiVariant(save_aoti(copy.deepcopy(model), out / "model.pt2", cpu), cpu))
    # The same package loaded a second time and timed as if it were another form: how far apart two
    # identical forms land in this run is its noise floor.
    timed("aoti_again", lambda: AotiVariant(forms["aoti"].file, cpu))
    timed("onnx_fp32", lambda: OrtVariant("onnx_fp32", "fp32", save_onnx(copy.deepcopy(model), out / "model.onnx"),
                                          cpu, threads))
    return {"forms": forms, "build_s": build_s}


FORMS = ("eager_fp32", "eager_channels_last", "torchscript", "compiled", "compiled_frozen", "aoti", "aoti_again",
         "onnx_fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="a trial or checkpoint directory (best_model.pt)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of unprofiled timing")
    parser.add_argument("--batch-sizes", default="1,512")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--top", type=int, default=6, help="ops listed per form and batch size")
    parser.add_argument("--smoke-test", action="store_true", help="untrained model, batch 1 and 8, few calls")
    parser.add_argument("--json", help="also write every measurement here")
    args = parser.parse_args()
    wanted = args.forms.split(",")
    unknown = [f for f in wanted if f not in FORMS]
    if unknown:
        parser.error(f"--forms: unknown {', '.join(unknown)}; known: {', '.join(FORMS)}")
    if "aoti_again" in wanted and "aoti" not in wanted:
        parser.error("--forms: aoti_again loads aoti's package a second time; list aoti too")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.smoke_test:
        model, source = AlexNet().eval(), "untrained AlexNet (--smoke-test)"
        batch_sizes = [1, 8]
    else:
        if not args.path:
            parser.error("give a trial or checkpoint directory, or --smoke-test")
        checkpoint, _ = locate_checkpoint(args.path)
        model, meta = load_best_model(checkpoint)
        source = f"{checkpoint} (trained {meta.get('precision')})"
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    # Each call at least ~0.2 s of work in total per measurement, whatever the batch.
    calls = {b: (3 if args.smoke_test else max(5, 400 // b)) for b in batch_sizes}

    with tempfile.TemporaryDirectory() as folder:
        built = build(model, Path(folder), args.threads, wanted)
        forms: dict[str, Variant] = built["forms"]
        inputs = {(n, b): f.prepare(torch.randn(b, 3, 32, 32)) for n, f in forms.items() for b in batch_sizes}
        for (n, _b), x in inputs.items():  # first calls (recompiles for a new batch size) out of the way
            forms[n].run(x)
        wall: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for b in batch_sizes:
                for n, f in forms.items():
                    wall[(n, b)].append(wall_ms(f, inputs[(n, b)], calls[b]))
        profiles: dict[tuple[str, int], dict[str, float]] = {}
        for b in batch_sizes:
            for n, f in forms.items():
                if isinstance(f, OrtVariant):
                    profiles[(n, b)] = ort_profile(f.file, args.threads, inputs[(n, b)], calls[b])
                else:
                    profiles[(n, b)] = torch_profile(f, inputs[(n, b)], calls[b])

    print(f"\n{machine_line()}")
    print(f"model: {source}; {args.threads} threads; {args.rounds} interleaved rounds of unprofiled timing; "
          f"then one profiled pass of {', '.join(f'{calls[b]} calls at batch {b}' for b in batch_sizes)}")
    print("\nbuild s (this process, cache as found): "
          + ", ".join(f"{n} {s:.1f}" for n, s in built["build_s"].items()))
    for b in batch_sizes:
        eager = statistics.median(wall[("eager_fp32", b)])
        print(f"\n### batch {b}: ms per call (unprofiled median; x eager fp32), then profiled self time per call by group\n")
        print("| form | ms/call | x eager | " + " | ".join(CATEGORIES) + " | profiled total | unseen |")
        print("|---|---|---|" + "---|" * len(CATEGORIES) + "---|---|")
        for n in forms:
            med = statistics.median(wall[(n, b)])
            groups = collections.Counter()
            for op, ms in profiles[(n, b)].items():
                groups[category(op)] += ms
            print(f"| {n} | {med:.3f} | {eager / med:.2f}x | "
                  + " | ".join(f"{groups[c]:.3f}" for c in CATEGORIES)
                  + f" | {sum(groups.values()):.3f} | {max(0.0, med - sum(groups.values())):.3f} |")
        print(f"\ntop {args.top} ops per form at batch {b} (self ms per call):")
        for n in forms:
            top = sorted(profiles[(n, b)].items(), key=lambda kv: -kv[1])[: args.top]
            print(f"- {n}: " + "; ".join(f"{op} {ms:.3f}" for op, ms in top))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine_line(), "model": source, "build_s": built["build_s"],
            "wall_ms": {f"{n}@{b}": v for (n, b), v in wall.items()},
            "profile_ms": {f"{n}@{b}": v for (n, b), v in profiles.items()}}, indent=1))


if __name__ == "__main__":
    main()
