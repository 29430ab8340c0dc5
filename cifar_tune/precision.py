"""The four precisions: what each one switches on, and whether a device can run it well.

    fp32      strict IEEE fp32: TF32 off for matmul and cuDNN
    tf32      fp32 storage, TF32 tensor-core math for matmul and convolutions (CUDA, Ampere+)
    amp_fp16  torch.autocast to float16, with a GradScaler against gradient underflow
    amp_bf16  torch.autocast to bfloat16, no scaler (bf16 has fp32's exponent range)

`device_problem` is asked before Ray starts (with the device the trials will
get) and again inside each trial (with the device it really got), so a config
that would crawl is refused up front rather than discovered an hour in.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str
    autocast_dtype: torch.dtype | None  # None: no autocast
    grad_scaler: bool
    allow_tf32: bool

    def apply_backend_flags(self) -> None:
        """TF32 switches are process-global: set them for this precision, on or off."""
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.set_float32_matmul_precision("high" if self.allow_tf32 else "highest")

    @contextlib.contextmanager
    def backend_flags(self) -> Iterator[None]:
        """This precision's TF32 switches for the block, the process's own restored afterwards."""
        saved = math_flags()
        self.apply_backend_flags()
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved["matmul_tf32"], saved["cudnn_tf32"]
            torch.set_float32_matmul_precision(saved["matmul_precision"])

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def make_scaler(self, device_type: str) -> torch.amp.GradScaler:
        # A disabled scaler is a no-op whose state_dict still round-trips, so the loop has one code path.
        return torch.amp.GradScaler(device_type, enabled=self.grad_scaler)


def math_flags() -> dict[str, bool | str]:
    """The process's TF32 switches: what `backend_flags` restores, and what a fresh process must copy
    to compute the same numbers (cifar_tune.export's AOTInductor check)."""
    return {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision()}


POLICIES = {
    "fp32": PrecisionPolicy("fp32", None, grad_scaler=False, allow_tf32=False),
    "tf32": PrecisionPolicy("tf32", None, grad_scaler=False, allow_tf32=True),
    "amp_fp16": PrecisionPolicy("amp_fp16", torch.float16, grad_scaler=True, allow_tf32=False),
    "amp_bf16": PrecisionPolicy("amp_bf16", torch.bfloat16, grad_scaler=False, allow_tf32=False),
}


def policy(name: str) -> PrecisionPolicy:
    return POLICIES[name]


def device_problem(precision: str, device: str) -> str | None:
    """Why `device` ("cpu", "cuda", "cuda:N") cannot run `precision` well, or None if it can.

    For "cuda" without a visible GPU (a driver steering a remote GPU cluster)
    only the CPU-independent facts can be checked; the trial checks again.
    """
    if device == "cpu":
        if precision == "tf32":
            return "TF32 is a CUDA tensor-core mode (Ampere or newer); on CPU it is plain fp32 under another name"
        if precision == "amp_fp16" and not torch.cpu._is_amx_fp16_supported():
            return _off_x86(precision) or ("fp16 autocast on this CPU (no AMX-FP16) runs about 20x slower than "
                                           "fp32: its fp16 GEMMs are emulated")
        if precision == "amp_bf16" and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
            return _off_x86(precision) or "bf16 autocast on this CPU (no AVX512-BF16 or AMX) is emulated and slower than fp32"
        return None
    if not torch.cuda.is_available():
        return None  # can't see the GPU from here; the trial re-checks on its worker
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    name = torch.cuda.get_device_name(torch.device(device))
    if precision == "tf32" and major < 8:
        return f"{name} (compute capability {major}.x) has no TF32 tensor cores; TF32 needs 8.0 or newer"
    if precision == "amp_bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{name} (compute capability {major}.x) has no native bf16; it needs 8.0 or newer"
    return None


def is_x86_cpu() -> bool:
    """Whether this process runs on an x86 CPU: where torch's capability queries (AVX512-BF16, AMX)
    mean something, and where this project's CPU speeds were measured."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _off_x86(precision: str) -> str | None:
    """The verdict for `precision` on a CPU that is not x86, or None on x86.

    torch's capability queries (AVX512-BF16, AMX) are x86 facts that answer False elsewhere, and
    the speeds behind the x86 verdicts were measured on x86 only; an Arm CPU with its own bf16 or
    fp16 instructions may run autocast well, or not: cifar-tune does not know, so it says so."""
    if is_x86_cpu():
        return None
    return (f"{precision} has not been measured on this {platform.machine()} CPU (cifar-tune has measured CPU autocast on "
            "x86 only: bf16 about 2x faster than fp32 with native support, 20x slower without); time it with "
            "benchmarks/train_throughput.py")


def well_run_precisions(device: str) -> tuple[list[str], dict[str, str]]:
    """What `search.precision: auto` expands to on `device` ("cpu" or "cuda"): the precisions it
    runs well, and {each one left out: why}. Decided from this machine's torch, at run time.

    For "cuda" without a GPU visible here (a driver steering a remote GPU cluster), tf32 and
    amp_bf16 depend on a compute capability that cannot be read from here, so they are left out;
    list them explicitly to run them."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        unknown = "the GPU's compute capability (8.0+ needed) cannot be read from a process without a GPU; " \
                  "list it explicitly to run it"
        return ["fp32", "amp_fp16"], {"tf32": unknown, "amp_bf16": unknown}
    kept, left_out = [], {}
    for name in POLICIES:
        problem = device_problem(name, device)
        if problem is None:
            kept.append(name)
        else:
            left_out[name] = problem
    return kept, left_out
