"""Device choice: ``auto`` takes a GPU when one is present; ``cuda`` only when asked or found."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from engine.errors import VosError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a usable torch.device."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise VosError(f"Unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps.") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VosError(f"Device '{name}' was asked for, but no CUDA GPU is available.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VosError(f"Device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) found.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise VosError("Device 'mps' was asked for, but Metal is not available.")
    elif device.type != "cpu":
        raise VosError(f"Unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps.")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), read from /proc/cpuinfo.

    Elsewhere bfloat16 is emulated and slower than float32, so it is not used.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def reduced_precision(device: torch.device) -> torch.dtype | None:
    """The fast low-precision type of ``device``: float16 on CUDA, bfloat16 on CPUs that have it."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def default_batch(device: torch.device) -> int:
    """Frames embedded at once by default. On 2 CPU cores a batch of 4 was slower a frame than
    single frames (ONNX Runtime, 768x416: 0.18 against 0.16 s), so 1; on a GPU 8 (not yet measured
    here: no GPU was lent when batching was written)."""
    return 8 if device.type == "cuda" else 1
