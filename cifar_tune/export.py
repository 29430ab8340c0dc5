"""Deployment variants of a trained AlexNet: building, saving, loading and running each one.

From a trial's best-validation weights (`best_model.pt`), every variant declared in
cifar_tune.variants (what each is, what it runs on, what it needs): `build_variants` builds those
this machine can, and lists the others with the reason (cifar_tune.machine.unmet).

Every variant takes a normalized float32 NCHW batch and returns float32 logits, so parity and
timing code treat them alike. `prepare` moves an input where the variant wants it (outside any
timer); `run` is what gets timed. `build_s` is what making the artifact took (export, quantization,
compilation), `load_s` what loading it took: both apart from any latency.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar_tune.config import MAX_EXPORT_BATCH, ModelConfig
from cifar_tune.errors import short_error
from cifar_tune.machine import int8_sums_saturate, ort_provider_loads, unmet
from cifar_tune.models import AlexNet, build_model
from cifar_tune.names import (
    AOTI_FILE,
    AOTI_WEIGHTS_FILE,
    BEST_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    ONNX_INT8_FILE,
    REFERENCE_VARIANT,
    TORCHSCRIPT_FILE,
)
from cifar_tune.precision import math_flags
from cifar_tune.variants import DEVICE_NEEDS, REGISTRY, VariantSpec

log = logging.getLogger(__name__)


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
    int8_weight_bits: int | None = None  # onnx_int8: 7 or 8, read from its file (the CPU it was built on decided)

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
    constructor makes the calls that compile and records them as `build_s`: batch 1, batch 2 (dynamo
    recompiles with a dynamic batch dimension) and batch 64 (on torch 2.14's CPU the convolution's
    shape rules split that dimension at 16, so larger batches compile once more). Without them those
    recompiles would land in whatever ran next, such as the parity pass, and be timed nowhere.

    `freezing` treats the weights as constants, as inductor's CPU inference guide recommends:
    batch norm folds into the convolutions and, on a CPU, every convolution runs in oneDNN on
    weights packed once (unfrozen, each goes through aten::convolution, which sends a small batch-1
    conv to PyTorch's im2col path: benchmarks/RESULTS.md, "Why the compiled forms lose")."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, mode: str | None = None,
                 freezing: bool = False) -> None:
        super().__init__(name, "fp32", device, "torch")
        if freezing and mode is not None:
            raise ValueError(f"{name}: freezing is built only with inductor's default mode, not mode={mode!r}")
        # Whether this mode replays CUDA graphs, read from torch's own table of modes: "max-autotune"
        # does too, not only "reduce-overhead". A replay writes into the same output buffer, so the
        # output is copied out; only a GPU shows the overwrite (tests read the table on a CPU).
        self.reuses_output = bool(torch._inductor.list_mode_options(mode or "default").get("triton.cudagraphs"))
        self.freezing = freezing
        start = time.perf_counter()
        # The options dict only makes this backend differ from an unfrozen one, so dynamo does not
        # reuse another instance's graph: freezing itself is read by dynamo while tracing, before
        # the options apply, hence the config patch in run() around any call that may trace.
        self.model = torch.compile(model.to(device).eval(), mode=mode, options={"freezing": True} if freezing else None)
        self.traced_shapes: set[torch.Size] = set()
        self.load_s = time.perf_counter() - start
        start = time.perf_counter()
        for batch in (1, 2, 64):
            self.run(self.prepare(torch.randn(batch, 3, 32, 32)))
        self.sync()
        self.build_s = time.perf_counter() - start

    @torch.inference_mode()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape not in self.traced_shapes:
            # A new batch size may trace again. Only then: a patch costs ~30 us, a tenth of a small GPU call.
            # Every compiled copy of AlexNet shares one code object (forward), and dynamo's default limit
            # of 8 graphs per code object is less than 4 variants x 3 shape ranges: past it dynamo runs
            # eager under this variant's name, silently. A higher limit, and a hard failure beyond it.
            with torch._inductor.config.patch(freezing=self.freezing), \
                    torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
                out = self.model(x)
            self.traced_shapes.add(x.shape)
        else:
            out = self.model(x)
        # CUDA graphs reuse their output buffer: hand out a copy there, only there
        return out.clone() if self.reuses_output else out


RECOMPILE_LIMIT = 32  # graphs dynamo may keep for AlexNet.forward in one process (CompiledVariant.run)


class AotiVariant(Variant):
    """model.pt2 (AOTInductor): a compiled shared library plus weights, run without Python tracing.

    With `weights`, the package was compiled for another trial of the same architecture and runs
    these weights instead: AOTInductor keeps every parameter and batch-norm statistic as a constant
    named by its state-dict key, which `load_constants` replaces in place (AOTICompiledModel in
    torch/export/pt2_archive/_package.py; constants it folded are folded again on the next run)."""

    def __init__(self, path: Path, device: torch.device, weights: dict[str, torch.Tensor] | None = None,
                 weights_file: Path | None = None) -> None:
        super().__init__("aoti", "fp32", device, "torch")
        start = time.perf_counter()
        self.runner = torch._inductor.aoti_load_package(str(path))
        if weights is not None:
            names = [n for n in self.runner.get_constant_fqns() if not n.startswith("_FOLDED_CONST_")]
            missing = [n for n in names if n not in weights]
            if missing:
                raise ExportError(f"{path.name} expects constants this model lacks: {', '.join(missing[:3])}")
            self.runner.load_constants({n: weights[n].to(device).contiguous() for n in names}, check_full_update=True)
        self.load_s = time.perf_counter() - start
        self.file = weights_file or path

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
        # Only providers that really load here (a probe session, cifar_tune.machine): get_available_providers()
        # lists CUDA and TensorRT in every onnxruntime-gpu wheel. Fallback is off, so a provider that fails
        # raises here, instead of ONNX Runtime retrying on CUDA with default options (TF32 back on).
        if device.type == "cuda" and ort_provider_loads("CUDAExecutionProvider", device.index or 0) is None:
            # Strict fp32 (ORT's CUDA provider enables TF32 by default), on the GPU IO binding uses.
            cuda_options = {"device_id": device.index or 0, "use_tf32": 0}
            wanted = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
            if tensorrt and ort_provider_loads("TensorrtExecutionProvider", device.index or 0) is None:
                wanted.insert(0, ("TensorrtExecutionProvider", {"device_id": device.index or 0,
                                                                 "trt_fp16_enable": tensorrt_fp16}))
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=wanted, enable_fallback=0)
        load_s = time.perf_counter() - start
        actual = self.session.get_providers()[0]
        # Believe the session, not the request: a CPU measurement is never labelled as the GPU's.
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


# --------------------------------------------------------------------------- building files


def save_torchscript(model: torch.nn.Module, path: Path) -> Path:
    example = torch.randn(2, 3, 32, 32)
    # no_grad, not inference_mode: inference tensors baked into a trace break torch.jit.load
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.freeze(torch.jit.trace(model.eval(), example)).save(str(path))
    return path


def export_program(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` (eval mode) through torch.export on `example`'s device, its batch dimension dynamic
    from 1 to MAX_EXPORT_BATCH (config.py says why that bound)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    return torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: batch}})


def save_aoti(model: torch.nn.Module, path: Path, device: torch.device) -> Path:
    """The exported program compiled for `device` and packaged by AOTInductor into one file."""
    exported = export_program(copy.deepcopy(model).to(device), torch.randn(2, 3, 32, 32, device=device))
    return Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(path)))


LOAD_IN_FRESH_PROCESS = """
import json, sys, time, torch
device = torch.device(sys.argv[2])
flags = json.loads(sys.argv[4])  # the parent's math flags: a new process starts from torch's defaults
torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
torch.set_float32_matmul_precision(flags["matmul_precision"])
x = torch.load(sys.argv[3], weights_only=True).to(device)  # first: `seconds` is the load and one call alone
start = time.perf_counter()
runner = torch._inductor.aoti_load_package(sys.argv[1])
with torch.inference_mode():
    logits = runner(x)
if device.type == "cuda":
    torch.cuda.synchronize(device)
seconds = time.perf_counter() - start
torch.save(logits.cpu(), sys.argv[3])
print(json.dumps({"seconds": seconds, "flags": {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
                  "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                  "matmul_precision": torch.get_float32_matmul_precision()}}))
"""


def exit_status(returncode: int) -> str:
    """'exit 1', or the signal that killed a child ('killed by SIGSEGV')."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def load_in_fresh_process(path: Path, device: torch.device, x: torch.Tensor) -> tuple[float, torch.Tensor, dict]:
    """Load a model.pt2 in a new Python process, as a deployment would, and run `x` through it with
    this process's TF32 switches (cuDNN's default is TF32 on, the benchmark's fp32 is strict): (seconds to
    load and run once, logits, the switches the child ran with). Proves the package needs nothing of
    the process that made it."""
    with tempfile.TemporaryDirectory() as folder:
        io = Path(folder) / "x.pt"
        torch.save(x.cpu(), io)
        # faulthandler: a crash in native code prints the Python stack instead of nothing
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", LOAD_IN_FRESH_PROCESS, str(path), str(device),
                               str(io), json.dumps(math_flags())], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ExportError(f"{path.name} does not load in a fresh process ({exit_status(done.returncode)}): "
                              f"{done.stderr.strip()[-1500:] or 'nothing on stderr'}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        return float(report["seconds"]), torch.load(io, weights_only=True), report["flags"]


def _aoti_variant(model: torch.nn.Module, path: Path, device: torch.device) -> AotiVariant:
    """The package loaded here for parity and timing, after a fresh process has loaded it and given
    the same logits; its load_s is the fresh process's (load and first call)."""
    variant = AotiVariant(path, device)
    x = torch.randn(4, 3, 32, 32)
    variant.load_s, fresh, _ = load_in_fresh_process(path, device, x)
    here = variant.predict(x)
    if not torch.allclose(fresh, here, atol=1e-4, rtol=1e-4):
        raise ExportError(f"{path.name} gives other logits in a fresh process (max diff {(fresh - here).abs().max():.3g})")
    return variant


def shapes_key(model: torch.nn.Module) -> str:
    """The model's architecture as its weights' names and shapes (batch norm or not, `model.width`),
    hashed: models with the same key differ only in their weights' values."""
    shapes = ";".join(f"{name}:{tuple(t.shape)}" for name, t in model.state_dict().items())
    return hashlib.sha256(shapes.encode()).hexdigest()[:12]


def aoti_key(device: torch.device, model: torch.nn.Module) -> str:
    """What a compiled AOTInductor package holds only for: the device kind it generated code for (a
    GPU's compute capability, a CPU's vector instruction set), the torch version, the architecture
    (`shapes_key`: with or without batch norm, its width). Packages with the same key differ only in
    their weights."""
    if device.type == "cuda":
        arch = "sm{}{}".format(*torch.cuda.get_device_capability(device))
    else:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        arch = str(pick_vec_isa()) or "scalar"
    return f"aoti-{device.type}-{arch}-torch{torch.__version__}-{shapes_key(model)}.pt2".replace("+", "_")


def aoti_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's constants as an AOTInductor package names them: its state dict without batch
    norm's `num_batches_tracked`, which the eval-mode graph never reads (so no package holds it)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def onnx_key(model: torch.nn.Module) -> str:
    """What a model.onnx holds only for: the architecture (`shapes_key`) and the torch version that
    exported it. Files with the same key differ only in their weights."""
    return f"onnx-{shapes_key(model)}-torch{torch.__version__}.onnx".replace("+", "_")


def _folded(model: torch.nn.Module) -> torch.nn.Module:
    """The eval-mode model with each batch norm folded into the conv before it, as ONNX export folds
    them anyway: exported from this, model.onnx's initializers are this module's weights, by name."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def save_onnx(model: torch.nn.Module, path: Path, template: Path | None = None,
              check_images: torch.Tensor | None = None) -> Path:
    """fp32 ONNX with a dynamic batch dimension, in one self-contained file, checked by onnx.checker.
    `template`: a model.onnx of this model's `onnx_key` exported for another trial; its graph with
    this model's weights is written instead of exporting again (about 2 CPU-s per trial here), when
    every weight finds its initializer and, on `check_images`, the result matches the model."""
    import onnx

    folded = _folded(model)
    if template is not None:
        try:
            return _onnx_from_template(template, folded, path, check_images)
        except Exception as exc:  # whatever is wrong with the template, exporting is the way that works
            log.warning("model.onnx exported afresh, the shared template did not serve: %s", short_error(exc))
    example = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        torch.onnx.export(folded, (example,), str(path), dynamo=True, external_data=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def _onnx_from_template(template: Path, folded: torch.nn.Module, path: Path, check_images: torch.Tensor | None) -> Path:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    proto = onnx.load(str(template))
    weights = {name: t.detach().cpu().numpy() for name, t in folded.state_dict().items()}
    initializers = {init.name: init for init in proto.graph.initializer}
    missing = [name for name in weights if name not in initializers]
    if missing:
        raise ExportError(f"the shared template has no initializer for {', '.join(missing[:3])}")
    for name, array in weights.items():
        if tuple(initializers[name].dims) != array.shape:
            raise ExportError(f"the shared template's {name} is {tuple(initializers[name].dims)}, not {array.shape}")
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    if check_images is not None and len(check_images):
        # An initializer the exporter had transformed (say, a transposed square weight) would still
        # fit by name and shape: the swapped graph must answer as the model does.
        images = check_images[:8].float().contiguous()
        options = ort.SessionOptions()  # one thread, as the export's own: 8 images need no pool
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": images.numpy()})[0]
        with torch.no_grad():
            want = folded(images).numpy()
        if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max() + 1e-6)):
            raise ExportError(f"the shared template with these weights differs from the model "
                              f"(max |diff| {float(np.abs(got - want).max()):.3g})")
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
    # Without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's u8 x s8 kernels add pairs of products in
    # int16 and saturate: accuracy collapsed here on an AVX2-only CPU (parity failed). 7-bit weights
    # (reduce_range) keep those sums in range; ONNX Runtime's quantization guide advises it there.
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=int8_sums_saturate(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def int8_weight_bits(path: Path) -> int:
    """7 or 8: the range an INT8 model's weights were quantized to, read from the file, so an export
    made on a CPU of the other kind (an experiment resumed elsewhere, a reused artifact) says which it
    is. Symmetric per-channel weights reach the edge of their range: |q| <= 64 with reduce_range."""
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]  # conv and linear weights
    if not weights:
        raise ValueError(f"{path}: no INT8 weight tensors")
    return 7 if max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64 else 8


# --------------------------------------------------------------------------- building variants


class _Artifacts:
    """The export files, each made at most once (model.onnx feeds onnx_fp32, onnx_fp16, onnx_int8 and
    tensorrt), timed; a file that failed to make fails every variant that needs it, with its reason."""

    def __init__(self, model: torch.nn.Module, out_dir: Path, device: torch.device, calibration: torch.Tensor,
                 reuse: bool = False, onnx_template: Path | None = None) -> None:
        self.model, self.out_dir, self.device, self.calibration = model, out_dir, device, calibration
        # reuse: files already in out_dir are taken as they are (timing an export made earlier)
        self.made: dict[str, Path | Exception] = {}
        if reuse:
            self.made = {name: out_dir / name for name in (TORCHSCRIPT_FILE, AOTI_FILE, AOTI_WEIGHTS_FILE, ONNX_FILE,
                                                           ONNX_FP16_FILE, ONNX_INT8_FILE) if (out_dir / name).is_file()}
        self.reused = set(self.made)
        self.seconds = 0.0  # spent making files since the last reset: the build_s of the variant that needed them
        self.savers = {TORCHSCRIPT_FILE: lambda p: save_torchscript(self.model, p),
                       AOTI_FILE: lambda p: save_aoti(self.model, p, self.device),
                       ONNX_FILE: lambda p: save_onnx(self.model, p, onnx_template, self.calibration),
                       ONNX_FP16_FILE: lambda p: save_onnx_fp16(self.path(ONNX_FILE), p),
                       ONNX_INT8_FILE: lambda p: save_onnx_int8(self.path(ONNX_FILE), p, self.calibration)}

    def path(self, name: str) -> Path:
        if name not in self.made:
            start = time.perf_counter()
            try:
                self.made[name] = self.savers[name](self.out_dir / name)
            except ExportError as exc:
                self.made[name] = exc
            except Exception as exc:
                self.made[name] = ExportError(f"{name} failed: {type(exc).__name__}: {exc}")  # whole: for the log
            self.seconds += time.perf_counter() - start
        made = self.made[name]
        if isinstance(made, Exception):
            raise made
        return made


@dataclass
class _Build:
    """What a builder gets: the variant's spec and everything it may need."""

    spec: VariantSpec
    model: torch.nn.Module
    device: torch.device
    threads: int
    tensorrt: bool
    files: _Artifacts
    aoti_template: Path | None = None

    def fresh_model(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def _compiled(b: _Build) -> Variant:
    return CompiledVariant(b.spec.name, b.fresh_model(), b.device, b.spec.compile_mode, b.spec.freezing)


def _eager_autocast(b: _Build) -> Variant:
    return EagerVariant(b.spec.name, b.fresh_model(), b.device, b.spec.precision, channels_last=True)


def _ort(b: _Build, device: torch.device | None = None, **kwargs: Any) -> OrtVariant:
    """The spec's ONNX file in ONNX Runtime, named and toleranced as the registry says."""
    return OrtVariant(b.spec.name, b.spec.precision, b.files.path(b.spec.file), device or b.device, b.threads,
                      **kwargs)


def _aoti(b: _Build) -> AotiVariant:
    """This trial's package (compiled now, or made earlier and reused: it passed its fresh-process
    check then), or, given `aoti_template` (a package of the same `aoti_key`, compiled for another
    trial), that package with this trial's weights swapped in, which compiles nothing: the trial's
    artifact is then its weights, model.aoti_weights.pt, to load into that package."""
    if b.spec.file in b.files.reused:
        return AotiVariant(b.files.path(b.spec.file), b.device)
    if b.aoti_template is None:
        return _aoti_variant(b.model, b.files.path(b.spec.file), b.device)
    start = time.perf_counter()
    weights, path = aoti_weights(b.model), b.files.out_dir / AOTI_WEIGHTS_FILE
    if AOTI_WEIGHTS_FILE not in b.files.reused:
        torch.save(weights, path)
    variant = AotiVariant(b.aoti_template, b.device, weights, path)
    variant.build_s = time.perf_counter() - start
    return variant


def _onnx_int8(b: _Build) -> OrtVariant:
    variant = _ort(b, torch.device("cpu"))  # cpu_only in the registry: ONNX Runtime's CPU kernels
    variant.int8_weight_bits = int8_weight_bits(variant.file)
    return variant


def _tensorrt_variant(b: _Build) -> OrtVariant:
    variant = _ort(b, tensorrt=True, tensorrt_fp16=True)
    if variant.runtime != "TensorrtExecutionProvider":  # the provider declined the graph
        raise ExportError(f"the TensorRT provider did not take the model (runs on {variant.runtime})")
    return variant


# name -> how to build it; one per entry of cifar_tune.variants.REGISTRY (a test keeps them equal).
BUILDERS: dict[str, Callable[[_Build], Variant]] = {
    "eager_fp32": lambda b: EagerVariant(b.spec.name, b.fresh_model(), b.device),
    "eager_channels_last": lambda b: EagerVariant(b.spec.name, b.fresh_model(), b.device, channels_last=True),
    "eager_bf16": _eager_autocast,
    "eager_fp16": _eager_autocast,
    "torchscript": lambda b: TorchScriptVariant(b.files.path(b.spec.file), b.device),
    "compiled": _compiled,
    "compiled_frozen": _compiled,
    "compiled_max_autotune": _compiled,
    "compiled_cudagraphs": _compiled,
    "aoti": _aoti,
    "onnx_fp32": lambda b: _ort(b, tensorrt=b.tensorrt),
    "onnx_fp16": lambda b: _ort(b, tensorrt=b.tensorrt),
    "onnx_int8": _onnx_int8,
    "tensorrt": _tensorrt_variant,
}


def build_variants(model: torch.nn.Module, out_dir: Path, device: torch.device, calibration: torch.Tensor,
                   threads: int, tensorrt: bool = False, wanted: list[str] | None = None,
                   deadline: float | None = None, reuse_files: bool = False, aoti_template: Path | None = None,
                   onnx_template: Path | None = None) -> tuple[list[Variant], dict[str, str], dict[str, str]]:
    """Write the export files into out_dir. Returns every variant that could be built on `device`,
    {name: reason} of those that failed to build (an export exception is recorded, not raised), and
    {name: reason} of those skipped because this device or installation cannot run them.

    `wanted`: the names to build (None: every variant the device runs). A variant the device itself
    rules out (a CUDA-only one on a CPU, autocast the CPU emulates) is listed as skipped only when asked
    for by name; a gap in the installation (no compiler, no provider that loads) always is. `deadline`
    (time.monotonic()): a variant whose `build_estimate_s` no longer fits before it is skipped, saying
    so. The reference (eager fp32) is always built. `reuse_files`: export files already in out_dir
    are loaded, not made again (the torch.compile forms, which have no file, compile again).
    `aoti_template`: a package of this model's `aoti_key` to swap the weights into instead of compiling;
    `onnx_template`: a model.onnx of its `onnx_key` to write with these weights instead of exporting."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _Artifacts(model, out_dir, device, calibration, reuse_files, onnx_template)
    if any(builder is _compiled and (wanted is None or name in wanted) for name, builder in BUILDERS.items()):
        # A worker reused for the next trial's export still holds the last one's compiled graphs, which
        # count toward dynamo's recompile limit; inductor's on-disk cache still serves their code.
        torch._dynamo.reset()
    variants: list[Variant] = []
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for spec in REGISTRY:
        reference = spec.name == REFERENCE_VARIANT
        if not reference and wanted is not None and spec.name not in wanted:
            continue
        problems = unmet(spec, device)
        if problems:
            need, reason = problems[0]
            if wanted is not None or need not in DEVICE_NEEDS:
                skipped[spec.name] = reason
            continue
        if not reference and deadline is not None and time.monotonic() + spec.build_estimate_s > deadline:
            skipped[spec.name] = (f"time budget: about {spec.build_estimate_s:.0f} s to build and time, "
                                  f"{max(0.0, deadline - time.monotonic()):.0f} s left")
            continue
        files.seconds = 0.0
        try:
            variant = BUILDERS[spec.name](_Build(spec, model, device, threads, tensorrt, files, aoti_template))
        except Exception as exc:  # one broken variant must not stop the others
            if reference:
                raise
            failed[spec.name] = short_error(exc)  # one line for the tables; the whole message for the log
            log.warning("variant %s was not built: %s", spec.name, exc)
            continue
        if files.seconds:  # it made its file: that is its build time (model.onnx's goes to onnx_fp32)
            variant.build_s = files.seconds
        variants.append(variant)
    return variants, failed, skipped
