"""Device choice: ``auto`` takes a GPU when one is present; ``cuda`` only when asked or found."""

from __future__ import annotations

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
