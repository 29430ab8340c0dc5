"""The deployment variants, declared once: what each is, what it runs on and what it needs.

Everything else is derived from `REGISTRY`: the names `export.variants` accepts (and their order),
what `cifar_tune.export.build_variants` builds or skips with the reason (the requirements are
checked by `cifar_tune.machine.unmet`), docs/deployment.md's table (`markdown_table`), the tests' fast list
and benchmarks/gpu_check.py's list. Plain data: importing this module loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from cifar_tune.names import AOTI_FILE, ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, REFERENCE_VARIANT, TORCHSCRIPT_FILE

# What a variant may need; `cifar_tune.machine.REQUIREMENTS` says how each is checked.
CUDA_DEVICE = "cuda_device"  # an NVIDIA GPU as the export's device
FAST_BF16 = "fast_bf16"  # the device runs bf16 autocast natively (cifar_tune.precision.device_problem)
FAST_FP16 = "fast_fp16"  # the device runs fp16 autocast well
INDUCTOR = "inductor"  # torch.compile's backend: a C++ compiler on a CPU; Triton, a C compiler and Python.h on CUDA
AOTI = "aoti"  # AOTInductor: a C++ compiler; on CUDA also a CUDA toolkit (CUDA_HOME, nvcc) and libcuda
ORT_CUDA = "ort_cuda"  # ONNX Runtime's CUDA provider, loading for real (a session is made to see)
ORT_TENSORRT = "ort_tensorrt"  # ONNX Runtime's TensorRT provider, loading for real
# Facts of the device, not gaps in the installation: a variant they rule out is listed as skipped only
# when asked for by name (a CPU export need not list every CUDA variant).
DEVICE_NEEDS = frozenset({CUDA_DEVICE, FAST_BF16, FAST_FP16})


@dataclass(frozen=True)
class VariantSpec:
    """One deployable form of a trained model."""

    name: str
    precision: str  # fp32 | bf16 | fp16 | int8: sets the parity tolerance
    runtime: str  # what runs it: torch, torch.compile, AOTInductor, ONNX Runtime (the provider is read at load)
    file: str | None  # the artifact in the trial's export/ folder, if it is a file
    needs: tuple[str, ...]  # requirements above, all of which must hold on the export's device
    what: str  # one line for docs/deployment.md's table
    cpu_only: bool = False  # runs on the CPU whatever the export's device (onnx_int8: CPU kernels)
    compile_mode: str | None = None  # torch.compile's mode (compiled variants only)
    freezing: bool = False  # inductor's freezing (compiled variants only)
    compiles: bool = False  # builds by compiling: 20-60 s on a 2-core CPU, minutes with max-autotune on a GPU
    build_estimate_s: float = 5.0  # a generous guess of building and timing it on a GPU (gpu_check's budget)
    in_gpu_check: bool = True  # benchmarks/gpu_check.py builds it by default


REGISTRY: tuple[VariantSpec, ...] = (
    VariantSpec(REFERENCE_VARIANT, "fp32", "torch", None, (),
                "the reference: the model as trained, fp32, NCHW"),
    VariantSpec("eager_channels_last", "fp32", "torch", None, (), "same, channels_last"),
    VariantSpec("eager_bf16", "bf16", "torch", None, (FAST_BF16,),
                "`torch.autocast` to bf16 at inference, channels_last"),
    VariantSpec("eager_fp16", "fp16", "torch", None, (FAST_FP16,),
                "`torch.autocast` to fp16 at inference, channels_last"),
    VariantSpec("torchscript", "fp32", "torch", TORCHSCRIPT_FILE, (),
                "`jit.trace` + `freeze`; `optimize_for_inference` when loaded (its oneDNN / cuDNN ops do not "
                "survive `torch.jit.save`)"),
    VariantSpec("compiled", "fp32", "torch.compile", None, (INDUCTOR,),
                "`torch.compile` (inductor, default mode) of the eager model", compiles=True, build_estimate_s=40),
    VariantSpec("compiled_frozen", "fp32", "torch.compile", None, (INDUCTOR,),
                "the same with inductor's `freezing`: weights as constants, batch norm folded, oneDNN weights "
                "packed once on a CPU", freezing=True, compiles=True, build_estimate_s=40),
    # "max-autotune" also turns on CUDA graphs (torch._inductor.list_mode_options); the no-cudagraphs
    # mode keeps this row about kernel autotuning alone, and compiled_cudagraphs about graphs alone.
    VariantSpec("compiled_max_autotune", "fp32", "torch.compile", None, (CUDA_DEVICE, INDUCTOR),
                "`mode=\"max-autotune-no-cudagraphs\"`: Triton kernels chosen by benchmarking, no CUDA graphs",
                compile_mode="max-autotune-no-cudagraphs", compiles=True, build_estimate_s=240, in_gpu_check=False),
    VariantSpec("compiled_cudagraphs", "fp32", "torch.compile", None, (CUDA_DEVICE, INDUCTOR),
                "`mode=\"reduce-overhead\"`: CUDA graphs replay the compiled kernels (outputs copied out of "
                "the graph's pool)", compile_mode="reduce-overhead", compiles=True, build_estimate_s=60),
    VariantSpec("aoti", "fp32", "AOTInductor", AOTI_FILE, (AOTI,),
                "`torch.export` (dynamic batch) compiled and packaged by AOTInductor; checked in a fresh "
                "process, as a deployment loads it. Compiled once per experiment: later trials swap their "
                "weights into that package (`model.aoti_weights.pt`)", compiles=True, build_estimate_s=90),
    VariantSpec("onnx_fp32", "fp32", "ONNX Runtime", ONNX_FILE, (),
                "`torch.onnx.export` (dynamo, opset 18, dynamic batch) of the model with batch norm folded; "
                "exported once per experiment: later trials write their weights into that graph, checked "
                "against the model; graph optimization ALL; the CUDA provider with IO binding where it "
                "loads, else the CPU provider (the row says which)",
                build_estimate_s=20),
    VariantSpec("onnx_fp16", "fp16", "ONNX Runtime", ONNX_FP16_FILE, (CUDA_DEVICE, ORT_CUDA),
                "fp16 weights and math, fp32 inputs and outputs, on ONNX Runtime's CUDA provider"),
    VariantSpec("onnx_int8", "int8", "ONNX Runtime", ONNX_INT8_FILE, (),
                "static QDQ quantization (per-channel weights, 7-bit where the CPU lacks VNNI: `int8_weight_bits` in "
                "parity.json and bench.csv, read from the file) calibrated on training images; CPU provider",
                cpu_only=True, build_estimate_s=30),
    VariantSpec("tensorrt", "fp16", "ONNX Runtime", ONNX_FILE, (CUDA_DEVICE, ORT_TENSORRT),
                "`model.onnx` through ONNX Runtime's TensorRT provider, fp16 allowed; the engine is built at "
                "the first call per batch size (`first_call_ms`)", build_estimate_s=120),
)

SPECS = {spec.name: spec for spec in REGISTRY}
VARIANTS = tuple(SPECS)  # every name, in the order they are built and listed


def markdown_table() -> str:
    """docs/deployment.md's table of variants, from the registry (tests/test_docs.py keeps them equal)."""
    lines = ["| variant | precision | runtime | file | needs | what |", "|---|---|---|---|---|---|"]
    for s in REGISTRY:
        needs = (", ".join(s.needs) or "nothing") + (" (runs on the CPU)" if s.cpu_only else "")
        lines.append(f"| `{s.name}` | {s.precision} | {s.runtime} | {f'`{s.file}`' if s.file else ''} | "
                     f"{needs} | {s.what} |")
    return "\n".join(lines)
