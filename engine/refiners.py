"""The refiner of a session by name, for the device its probabilities live on."""

from __future__ import annotations

import torch

from engine.bilateral_params import BilateralParams
from engine.bilateral_refiner import BilateralRefiner
from engine.config import REFINERS
from engine.errors import VosError

__all__ = ["make_refiner"]


def make_refiner(name: str, device: torch.device | str, params: BilateralParams | None = None, *, crop: bool = False):
    """``refiner(frame, probs) -> probs`` for :attr:`SessionConfig.refine` ``name``, or None for "none".

    "bilateral" is the numpy/scipy solver on a CPU device (the faster one there) and the torch solver
    on CUDA or MPS, which keeps the probabilities on the device; both solve the same system.
    ``crop`` (the numpy solver on the uncertain window only) has no effect on the torch solver.
    """
    key = name.strip().lower()
    if key not in REFINERS:
        raise VosError(f"Unknown refiner '{name}'; use one of {', '.join(REFINERS)}.")
    if key == "none":
        return None
    if torch.device(device).type == "cpu":
        return BilateralRefiner(params, crop=crop)
    from engine.bilateral_torch import TorchBilateralRefiner

    return TorchBilateralRefiner(params)
