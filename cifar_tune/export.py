"""Deployment variants of a trained AlexNet: building, saving, loading and running each one.

From a trial's best-validation weights (`best_model.pt`):

    eager_fp32           the reference: the PyTorch model as trained, fp32, NCHW
    eager_channels_last  same weights, channels_last memory format
    eager_bf16 / _fp16   torch.autocast at inference, channels_last (fp16 only where the device runs it well)
    torchscript          jit.trace + freeze saved as model.pt; optimize_for_inference when loaded
    compiled             torch.compile (inductor, default mode); on CUDA also compiled_max_autotune
                         (mode "max-autotune") and compiled_cudagraphs (mode "reduce-overhead")
    compiled_frozen      the same with inductor's freezing (weights as constants: batch norm folded,
                         oneDNN weights pre-packed on a CPU), inductor's recipe for inference
    aoti                 torch.export with a dynamic batch, compiled and packaged by AOTInductor as
                         model.pt2, loaded with torch._inductor.aoti_load_package (checked and its load
                         timed in a fresh process, as a deployment loads it)
    onnx_fp32            torch.onnx.export, dynamic batch, one file model.onnx, ONNX Runtime with
                         graph optimization ALL (CUDA provider with IO binding on GPU, CPU otherwise)
    onnx_fp16            model.fp16.onnx, fp16 weights and math, fp32 inputs/outputs (GPU only)
    tensorrt             model.onnx through ONNX Runtime's TensorRT provider with fp16 allowed (where
                         onnxruntime-gpu has it, on an NVIDIA GPU); the engine is built at the first call
    onnx_int8            model.int8.onnx, static QDQ quantization calibrated on training images (CPU)

Every variant takes a normalized float32 NCHW batch and returns float32 logits, so parity and
timing code treat them alike. `prepare` moves an input where the variant wants it (outside any
timer); `run` is what gets timed. `build_s` is what making the artifact took (export, quantization,
compilation), `load_s` what loading it took: both apart from any latency.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar_tune.config import ModelConfig
from cifar_tune.errors import short_error
from cifar_tune.models import AlexNet, build_model
from cifar_tune.names import (
    AOTI_FILE,
    BEST_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    ONNX_INT8_FILE,
    REFERENCE_VARIANT,
    TORCHSCRIPT_FILE,
)
from cifar_tune.precision import device_problem


class ExportError(RuntimeError):
    """A variant could not be built; the message says which and why."""


def load_best_model(checkpoint_dir: str | Path) -> tuple[AlexNet, dict[str, Any]]:
    """The best-validation weights of a checkpoint folder, as an fp32 eval-mode model on the CPU."""
    path = Path(checkpoint_dir) / BEST_FILE
    if not path.is_file():
        raise ExportError(f"{checkpoint_dir}: no {BEST_FILE} (not a cifar-tune checkpoint)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelConfig.model_validate(saved["model_config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), {k: v for k, v in saved.items() if k != "state_dict"}


# --------------------------------------------------------------------------- variants


@dataclass
class Variant(ABC):
    """One deployable form of the model on one device."""

    name: str
    precision: str  # fp32 | bf16 | fp16 | int8: sets the parity tolerance
    device: torch.device
    runtime: str  # "torch", or the ONNX Runtime provider that really runs it
    load_s: float = math.nan  # seconds from its file (or the in-memory model) to ready to run
    file: Path | None = None  # the deployment artifact it runs, if it is a file
    build_s: float = math.nan  # seconds to make it: export, quantize or compile (NaN: nothing to build)

    def prepare(self, x: torch.Tensor) -> Any:
        return x.to(self.device)

    @abstractmethod
    def run(self, prepared: Any) -> Any:
        """The timed part: one forward pass on a prepared input."""

    def to_logits(self, output: Any) -> torch.Tensor:
        return output.float().cpu()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_logits(self.run(self.prepare(x)))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class EagerVariant(Variant):
    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False) -> None:
        super().__init__(name, precision, device, "torch")
        start = time.perf_counter()
        self.channels_last = channels_last
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sync()
        self.load_s = time.perf_counter() - start
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype
                    else contextlib.nullcontext())
        with autocast:
            return self.model(x)


class TorchScriptVariant(Variant):
    """model.pt is the traced, frozen module; optimize_for_inference runs at load time, because the
    ops it inserts (prepacked oneDNN / cuDNN fusions) belong to the device and do not survive
    torch.jit.save / torch.jit.load."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__("torchscript", "fp32", device, "torch")
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
            self.module = torch.jit.optimize_for_inference(torch.jit.load(str(path), map_location=device).eval())
        self.load_s, self.file = time.perf_counter() - start, path

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class CompiledVariant(Variant):
    """torch.compile of the eager model (inductor). Compilation happens at the first call, so the
    constructor makes the calls that compile and records them as `build_s`: batch 1, then batch 2,
    at which dynamo recompiles once with a dynamic batch dimension that serves every larger batch.
    (Without the second call that recompile would land in whatever ran next, such as the parity pass,
    and be timed nowhere.)

    `freezing` treats the weights as constants, as inductor's CPU inference guide recommends:
    batch norm folds into the convolutions and, on a CPU, every convolution runs in oneDNN on
    weights packed once (unfrozen, each goes through aten::convolution, which sends a small batch-1
    conv to PyTorch's im2col path: benchmarks/RESULTS.md, "Why the compiled forms lose")."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, mode: str | None = None,
                 freezing: bool = False) -> None:
        super().__init__(name, "fp32", device, "torch")
        if freezing and mode is not None:
            raise ValueError(f"{name}: freezing is built only with inductor's default mode, not mode={mode!r}")
        self.reuses_output = mode == "reduce-overhead"
        self.freezing = freezing
        start = time.perf_counter()
        # The options dict only makes this backend differ from an unfrozen one, so dynamo does not
        # reuse another instance's graph: freezing itself is read by dynamo while tracing, before
        # the options apply, hence the config patch in run() around any call that may trace.
        self.model = torch.compile(model.to(device).eval(), mode=mode, options={"freezing": True} if freezing else None)
        self.traced_shapes: set[torch.Size] = set()
        self.load_s = time.perf_counter() - start
        start = time.perf_counter()
        for batch in (1, 2):
            self.run(self.prepare(torch.randn(batch, 3, 32, 32)))
        self.sync()
        self.build_s = time.perf_counter() - start

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        if self.freezing and x.shape not in self.traced_shapes:
            # A new batch size may trace again. Only then: the patch costs ~30 us, a tenth of a small GPU call.
            with torch._inductor.config.patch(freezing=True):
                out = self.model(x)
            self.traced_shapes.add(x.shape)
        else:
            out = self.model(x)
        # cudagraphs (reduce-overhead) reuse their output buffer: hand out a copy there, only there
        return out.clone() if self.reuses_output else out


class AotiVariant(Variant):
    """model.pt2 (AOTInductor): a compiled shared library plus weights, run without Python tracing."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__("aoti", "fp32", device, "torch")
        self.runner = torch._inductor.aoti_load_package(str(path))
        self.file = path

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


class OrtVariant(Variant):
    """An ONNX file in ONNX Runtime; on CUDA the input and output live on the GPU (IO binding),
    so host-device copies are not timed as compute."""

    def __init__(self, name: str, precision: str, path: Path, device: torch.device, threads: int,
                 tensorrt: bool = False, tensorrt_fp16: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the CUDA->CPU fallback is detected below, not logged
        wanted: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            # Strict fp32 (ORT's CUDA provider enables TF32 by default), on the GPU IO binding uses.
            cuda_options = {"device_id": device.index or 0, "use_tf32": 0}
            wanted = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
            if tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
                wanted.insert(0, ("TensorrtExecutionProvider", {"device_id": device.index or 0,
                                                                 "trt_fp16_enable": tensorrt_fp16}))
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=wanted)
        load_s = time.perf_counter() - start
        actual = self.session.get_providers()[0]
        # onnxruntime-gpu falls back to CPU silently: believe the session, not the request.
        if device.type == "cuda" and actual == "CPUExecutionProvider":
            device = torch.device("cpu")
        super().__init__(name, precision, device, actual)
        self.load_s, self.file = load_s, path
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def prepare(self, x: torch.Tensor) -> Any:
        if self.device.type != "cuda":
            return x.contiguous().numpy()
        x = x.to(self.device).contiguous()
        out = torch.empty((x.shape[0], 10), device=self.device, dtype=torch.float32)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device.index or 0, np.float32, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device.index or 0, np.float32, tuple(out.shape),
                            out.data_ptr())
        return binding, x, out  # keep x and out alive while the binding points at them

    def run(self, prepared: Any) -> Any:
        if self.device.type != "cuda":
            return self.session.run([self.output_name], {self.input_name: prepared})[0]
        binding, _, out = prepared
        self.session.run_with_iobinding(binding)
        return out

    def to_logits(self, output: Any) -> torch.Tensor:
        return torch.as_tensor(output).float().cpu()


def ort_providers() -> list[str]:
    """ONNX Runtime's providers in this process, after loading the CUDA/cuDNN libraries that
    onnxruntime-gpu needs (from the nvidia-* wheels torch brought) where it can."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls") and "CUDAExecutionProvider" in ort.get_available_providers():
        with contextlib.suppress(Exception):  # a CPU-only machine: nothing to load
            ort.preload_dlls()
    return ort.get_available_providers()


# --------------------------------------------------------------------------- building files


def save_torchscript(model: torch.nn.Module, path: Path) -> Path:
    example = torch.randn(2, 3, 32, 32)
    # no_grad, not inference_mode: inference tensors baked into a trace break torch.jit.load
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.freeze(torch.jit.trace(model.eval(), example)).save(str(path))
    return path


def save_aoti(model: torch.nn.Module, path: Path, device: torch.device) -> Path:
    """torch.export with a dynamic batch dimension, compiled for `device` and packaged by
    AOTInductor into one file."""
    example = torch.randn(2, 3, 32, 32, device=device)
    exported = torch.export.export(copy.deepcopy(model).to(device).eval(), (example,),
                                   dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}})
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path)))


LOAD_IN_FRESH_PROCESS = """
import sys, time, torch
device = torch.device(sys.argv[2])
start = time.perf_counter()
runner = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.load(sys.argv[3], weights_only=True).to(device)
with torch.inference_mode():
    logits = runner(x)
if device.type == "cuda":
    torch.cuda.synchronize(device)
print(time.perf_counter() - start)
torch.save(logits.cpu(), sys.argv[3])
"""


def load_in_fresh_process(path: Path, device: torch.device, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Load a model.pt2 in a new Python process, as a deployment would, and run `x` through it:
    (seconds to load and run once, logits). Proves the package needs nothing of the process that made it."""
    with tempfile.TemporaryDirectory() as folder:
        io = Path(folder) / "x.pt"
        torch.save(x.cpu(), io)
        done = subprocess.run([sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(path), str(device), str(io)],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ExportError(f"{path.name} does not load in a fresh process: {done.stderr.strip()[-500:]}")
        return float(done.stdout.strip().splitlines()[-1]), torch.load(io, weights_only=True)


def _aoti_variant(model: torch.nn.Module, path: Path, device: torch.device) -> AotiVariant:
    """The package loaded here for parity and timing, after a fresh process has loaded it and given
    the same logits; its load_s is the fresh process's (load and first call)."""
    variant = AotiVariant(path, device)
    x = torch.randn(4, 3, 32, 32)
    variant.load_s, fresh = load_in_fresh_process(path, device, x)
    here = variant.predict(x)
    if not torch.allclose(fresh, here, atol=1e-4, rtol=1e-4):
        raise ExportError(f"{path.name} gives other logits in a fresh process (max diff {(fresh - here).abs().max():.3g})")
    return variant


def save_onnx(model: torch.nn.Module, path: Path) -> Path:
    """fp32 ONNX with a dynamic batch dimension, in one self-contained file, checked by onnx.checker."""
    import onnx

    example = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def save_onnx_fp16(fp32_path: Path, path: Path) -> Path:
    """fp16 weights and math, fp32 inputs and outputs (Cast nodes at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    # keep_io_types appends the input Cast at the end of the node list; the checker (and some
    # runtimes) need topological order (onnxconverter-common issues 208, 256).
    sorted_model = OnnxModel(model)
    sorted_model.topological_sort()
    model = sorted_model.model
    onnx.save(model, str(path))
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def save_onnx_int8(fp32_path: Path, path: Path, calibration: torch.Tensor) -> Path:
    """Static INT8 (QDQ, per-channel weights) calibrated on normalized training images."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": b.numpy()} for b in calibration.split(64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # The recommended pre-pass (shape inference, graph clean-up) before quantizing.
    prepared = path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU ($CXX, else g++, c++ or clang++ on PATH), or None."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return next((found for c in candidates if c and (found := shutil.which(c))), None)


# Variants only a CUDA device runs, and why (for a request on another device).
CUDA_ONLY = {"compiled_max_autotune": "max-autotune tunes GPU kernels", "compiled_cudagraphs": "CUDA graphs",
             "onnx_fp16": "fp16 math in ONNX Runtime is for its CUDA provider",
             "tensorrt": "TensorRT runs on NVIDIA GPUs"}
# name: (torch.compile mode, freezing)
COMPILED = {"compiled": (None, False), "compiled_frozen": (None, True), "compiled_max_autotune": ("max-autotune", False),
            "compiled_cudagraphs": ("reduce-overhead", False)}


def build_variants(model: torch.nn.Module, out_dir: Path, device: torch.device, calibration: torch.Tensor,
                   threads: int, tensorrt: bool = False,
                   wanted: list[str] | None = None) -> tuple[list[Variant], dict[str, str], dict[str, str]]:
    """Write the export files into out_dir. Returns every variant that could be built on `device`,
    {name: reason} of those that failed to build (an export exception is recorded, not raised), and
    {name: reason} of those skipped because this device or installation cannot run them.
    `wanted`: the names to build (None: every variant the device runs; only a wanted one is listed
    as skipped). The reference (eager fp32) is always built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        ort_providers()  # load onnxruntime-gpu's CUDA libraries before the first session
    variants: list[Variant] = [EagerVariant(REFERENCE_VARIANT, copy.deepcopy(model), device)]
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def asked(name: str, missing: str | None = None, list_always: bool = False) -> bool:
        """Whether to build `name` here. One that cannot be built here (a CUDA-only variant on another
        device, or `missing`: what this machine lacks) is listed as skipped with the reason: always
        where `list_always` (an installation gap worth knowing), else only when asked for by name."""
        if wanted is not None and name not in wanted:
            return False
        if name in CUDA_ONLY and device.type != "cuda":
            missing, list_always = f"needs a CUDA device ({CUDA_ONLY[name]}); this export runs on {device.type}", False
        if missing:
            if wanted is not None or list_always:
                skipped[name] = missing
            return False
        return True

    def attempt(name: str, build: Any, save: Any = None, missing: str | None = None, list_always: bool = False) -> None:
        """Build one variant, timing `save` (making its file) as its build_s."""
        if not asked(name, missing, list_always):
            return
        try:
            start = time.perf_counter()
            path = save() if save else None
            build_s = time.perf_counter() - start
            variant = build(path) if save else build()
            if save:
                variant.build_s = build_s
            variants.append(variant)
        except Exception as exc:  # one broken variant must not stop the others
            failed[name] = short_error(exc)

    attempt("eager_channels_last",
            lambda: EagerVariant("eager_channels_last", copy.deepcopy(model), device, channels_last=True))
    for precision, name in (("bf16", "amp_bf16"), ("fp16", "amp_fp16")):
        problem = device_problem(name, device.type)
        attempt(f"eager_{precision}",
                lambda p=precision: EagerVariant(f"eager_{p}", copy.deepcopy(model), device, p, channels_last=True),
                missing=f"{name} on {device.type}: {problem}" if problem else None)
    attempt("torchscript", lambda path: TorchScriptVariant(path, device),
            lambda: save_torchscript(model, out_dir / TORCHSCRIPT_FILE))
    no_compiler = "needs a C++ compiler (g++ or clang++; $CXX) and none is on PATH" if cxx_compiler() is None else None
    for name, (mode, freezing) in COMPILED.items():  # inductor's CPU kernels are C++; its CUDA ones are Triton
        attempt(name, lambda n=name, m=mode, f=freezing: CompiledVariant(n, copy.deepcopy(model), device, m, f),
                missing=f"torch.compile on a CPU {no_compiler}" if no_compiler and device.type == "cpu" else None,
                list_always=True)
    attempt("aoti", lambda path: _aoti_variant(model, path, device),  # its wrapper is C++ on any device
            lambda: save_aoti(model, out_dir / AOTI_FILE, device),
            missing=f"AOTInductor on a CPU {no_compiler}" if no_compiler else None, list_always=True)

    onnx_names = [n for n in ("onnx_fp32", "onnx_fp16", "onnx_int8", "tensorrt") if asked(n)]
    if not onnx_names:
        return variants, failed, skipped
    try:
        start = time.perf_counter()
        onnx_path = save_onnx(model, out_dir / ONNX_FILE)  # also the source of the fp16 and int8 files
        onnx_build_s = time.perf_counter() - start
    except Exception as exc:
        failed.update({n: f"ONNX export failed: {short_error(exc)}" for n in onnx_names})
        return variants, failed, skipped
    attempt("onnx_fp32", lambda: OrtVariant("onnx_fp32", "fp32", onnx_path, device, threads, tensorrt))
    if variants[-1].name == "onnx_fp32":
        variants[-1].build_s = onnx_build_s
    # Whether ONNX Runtime here has a working CUDA provider (not so when the CPU package won): believe
    # the fp32 session where there is one, as onnxruntime-gpu falls back to the CPU silently.
    fp32 = next((v for v in variants if v.name == "onnx_fp32"), None)
    on_gpu = fp32.device.type == "cuda" if fp32 else device.type == "cuda" and "CUDAExecutionProvider" in ort_providers()
    if device.type == "cuda" and not on_gpu and "onnx_fp16" in onnx_names:
        failed["onnx_fp16"] = ("onnxruntime here has no working CUDA provider (onnx_fp32 ran on the CPU instead); "
                               f"providers: {', '.join(ort_providers())}. Install onnxruntime-gpu in place of "
                               "onnxruntime (README: GPU nodes)")
    if on_gpu:
        attempt("onnx_fp16", lambda path: OrtVariant("onnx_fp16", "fp16", path, device, threads, tensorrt),
                lambda: save_onnx_fp16(onnx_path, out_dir / ONNX_FP16_FILE))
    attempt("onnx_int8", lambda path: OrtVariant("onnx_int8", "int8", path, torch.device("cpu"), threads),
            lambda: save_onnx_int8(onnx_path, out_dir / ONNX_INT8_FILE, calibration))
    if "tensorrt" in onnx_names:
        no_trt = None if "TensorrtExecutionProvider" in ort_providers() else (
            "onnxruntime here has no TensorRT provider (it needs onnxruntime-gpu built with TensorRT and the "
            f"TensorRT libraries); providers: {', '.join(ort_providers())}")
        attempt("tensorrt", lambda: _tensorrt_variant(onnx_path, device, threads), missing=no_trt, list_always=True)
    return variants, failed, skipped


def _tensorrt_variant(onnx_path: Path, device: torch.device, threads: int) -> OrtVariant:
    variant = OrtVariant("tensorrt", "fp16", onnx_path, device, threads, tensorrt=True, tensorrt_fp16=True)
    if variant.runtime != "TensorrtExecutionProvider":  # the provider declined the graph or failed to start
        raise ExportError(f"the TensorRT provider did not take the model (runs on {variant.runtime})")
    return variant
