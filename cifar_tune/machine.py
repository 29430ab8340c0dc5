"""Facts about the machine a measurement ran on, and whether it meets a variant's requirements.

    environment(threads, device)   provenance for every bench row: versions, CPU, GPU, driver, load
    device_name(device)            the CPU's or GPU's marketing name
    unmet(spec, device)            why this machine cannot build a variant (cifar_tune.variants), or []
    ort_provider_loads(name)       whether an ONNX Runtime provider really loads: a session is made to see

Every probe answers from this process and this machine, at run time, never from a list of what a
package claims: `onnxruntime.get_available_providers()` names the TensorRT and CUDA providers in
every onnxruntime-gpu wheel, whether or not their libraries load.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import importlib.util
import math
import os
import platform
import shutil
import sysconfig
from pathlib import Path
from typing import Any

import torch

from cifar_tune.precision import device_problem
from cifar_tune.variants import AOTI, CUDA_DEVICE, FAST_BF16, FAST_FP16, INDUCTOR, ORT_CUDA, ORT_TENSORRT, VariantSpec

# --------------------------------------------------------------------------- names and provenance


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def int8_sums_saturate() -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels saturate on this CPU: x86 without int8 dot-product
    instructions (AVX512-VNNI or AVX-VNNI) adds pairs of products in int16. Read at run time."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # other architectures' kernels widen first
    if torch.cpu._is_vnni_supported():  # AVX512-VNNI
        return False
    try:
        return not any(line.startswith("flags") and " avx_vnni" in line
                       for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return True


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def nvml_handle(device: torch.device) -> tuple[Any, Any]:
    """(pynvml module, handle) of a CUDA device, found by UUID (NVML's indices ignore
    CUDA_VISIBLE_DEVICES, torch's follow it); raises ImportError or pynvml's NVMLError."""
    import pynvml

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    try:
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except pynvml.NVMLError:
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)


def _nvml(device: torch.device) -> dict[str, Any]:
    """Driver, SM clock (MHz) and power limit (W) from NVML, where pynvml is installed."""
    try:
        pynvml, handle = nvml_handle(device)
        return {"driver_version": pynvml.nvmlSystemGetDriverVersion(),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "power_limit_w": pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000}
    except Exception:  # no NVML, or present but unusable (no driver access): provenance stays partial
        return {}


def environment(threads: int, device: torch.device | None = None) -> dict[str, Any]:
    """Provenance every row carries: versions, threads, the CPU, how busy the machine was when the
    benchmark started (1-minute load average), and on CUDA the GPU's UUID, CUDA and cuDNN versions,
    and (where NVML is importable) driver, SM clock and power limit. The device's name goes per row:
    an onnx_int8 row runs on the CPU even when the others ran on a GPU."""
    import onnx
    import onnxruntime

    env: dict[str, Any] = {
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "onnx_version": onnx.__version__,
        "threads": threads,
        "cpu_name": cpu_name(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if device is not None and device.type == "cuda":
        env.update(gpu_uuid=str(torch.cuda.get_device_properties(device).uuid), cuda_version=torch.version.cuda,
                   cudnn_version=torch.backends.cudnn.version(), **_nvml(device))
    return env


# --------------------------------------------------------------------------- compilers and toolkits


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU ($CXX, else g++, c++ or clang++ on PATH), or None."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return next((found for c in candidates if c and (found := shutil.which(c))), None)


def c_compiler() -> str | None:
    """The C compiler Triton builds its launcher with: $CC, else gcc, else clang (triton/runtime/build.py)."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return shutil.which("gcc") or shutil.which("clang")


def python_headers() -> Path | None:
    """Python.h of this interpreter, which Triton's launcher includes; None where the headers are missing."""
    scheme = sysconfig.get_default_scheme()
    header = Path(sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]) / "Python.h"
    return header if header.is_file() else None


def cuda_toolkit() -> Path | None:
    """The CUDA toolkit AOTInductor compiles against on CUDA: torch's own search (CUDA_HOME or CUDA_PATH,
    else nvcc's folder on PATH, else /usr/local/cuda), holding include/cuda.h. None where there is none."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and (nvcc := shutil.which("nvcc")):
        home = str(Path(nvcc).resolve().parent.parent)
    home = home or "/usr/local/cuda"
    return Path(home) if (Path(home) / "include" / "cuda.h").is_file() else None


def libcuda_loads() -> bool:
    """Whether the driver's libcuda (which AOTInductor's CUDA packages link) loads in this process."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- ONNX Runtime providers


@functools.cache
def ort_provider_loads(provider: str, device_index: int = 0) -> str | None:
    """None when ONNX Runtime's `provider` really runs a session here, else why not.

    A tiny model (one Identity) is loaded with the provider first and the CPU after it, and fallback
    off: `session.get_providers()` then names what runs. Cached per process: a provider that loads
    once loads again."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        return f"not installed ({exc})"
    if provider not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {provider} (providers: {', '.join(ort.get_available_providers())})"
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):  # the CUDA/cuDNN libraries from torch's nvidia-* wheels, where present
            ort.preload_dlls()
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = lambda name: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])  # noqa: E731
    graph = onnx.helper.make_graph([node], "probe", [value("x")], [value("y")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a provider that fails to load prints nothing; the answer below says why
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, enable_fallback=0,
                                       providers=[(provider, {"device_id": device_index}), "CPUExecutionProvider"])
    except Exception as exc:  # the provider's shared libraries (CUDA, cuDNN, TensorRT) missing or unloadable
        return f"{provider} is listed but does not load: {str(exc).strip().splitlines()[0][:300]}"
    if provider not in session.get_providers():
        return f"{provider} is listed but the session ran on {', '.join(session.get_providers())}"
    return None


def ort_providers_that_load(device_index: int = 0) -> list[str]:
    """ONNX Runtime's providers that really load here (the CPU's always does)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return [p for p in ort.get_available_providers()
            if p == "CPUExecutionProvider" or ort_provider_loads(p, device_index) is None]


# --------------------------------------------------------------------------- a variant's requirements


def _cuda_device(device: torch.device) -> str | None:
    return None if device.type == "cuda" else f"needs a CUDA device; this export runs on {device.type}"


def _fast(precision: str) -> Any:
    def check(device: torch.device) -> str | None:
        problem = device_problem(precision, str(device))
        return f"{precision} on {device.type}: {problem}" if problem else None
    return check


def _inductor(device: torch.device) -> str | None:
    if device.type != "cuda":  # inductor's CPU kernels are C++
        return None if cxx_compiler() else "torch.compile on a CPU needs a C++ compiler (g++ or clang++; $CXX): none on PATH"
    missing = []  # its CUDA kernels are Triton, whose launcher is C, compiled against Python.h
    if importlib.util.find_spec("triton") is None:
        missing.append("the triton package")
    if c_compiler() is None:
        missing.append("a C compiler (gcc or clang; $CC) for Triton's launcher")
    if python_headers() is None:
        missing.append(f"Python's headers (Python.h under {sysconfig.get_paths()['include']}) for Triton's launcher")
    return f"torch.compile on CUDA needs {' and '.join(missing)}" if missing else None


def _aoti(device: torch.device) -> str | None:
    missing = [] if cxx_compiler() else ["a C++ compiler (g++ or clang++; $CXX)"]  # its wrapper is C++ on any device
    if device.type == "cuda":
        if cuda_toolkit() is None:
            missing.append("a CUDA toolkit (CUDA_HOME, or nvcc on PATH, with include/cuda.h)")
        if not libcuda_loads():
            missing.append("the driver's libcuda.so.1")
    return f"AOTInductor on {device.type} needs {' and '.join(missing)}" if missing else None


def _ort(provider: str) -> Any:
    def check(device: torch.device) -> str | None:
        problem = ort_provider_loads(provider, device.index or 0)
        return f"ONNX Runtime's {provider}: {problem}; install onnxruntime-gpu (README: On a GPU)" if problem else None
    return check


# requirement -> check(device): None where it holds, else why not. One per name in cifar_tune.variants.
REQUIREMENTS = {
    CUDA_DEVICE: _cuda_device,
    FAST_BF16: _fast("amp_bf16"),
    FAST_FP16: _fast("amp_fp16"),
    INDUCTOR: _inductor,
    AOTI: _aoti,
    ORT_CUDA: _ort("CUDAExecutionProvider"),
    ORT_TENSORRT: _ort("TensorrtExecutionProvider"),
}


def unmet(spec: VariantSpec, device: torch.device) -> list[tuple[str, str]]:
    """Why `spec` cannot be built for `device` on this machine: [(requirement, reason)], or [] where it
    can. Checked in the order declared, stopping at the first unmet one (a CPU need not be told that it
    also lacks TensorRT)."""
    for need in spec.needs:
        if (problem := REQUIREMENTS[need](device)) is not None:
            return [(need, problem)]
    return []
