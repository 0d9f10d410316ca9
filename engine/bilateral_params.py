"""What both bilateral solvers share: their parameters, the constants of the system they solve, the
working resolution, and the checks on their inputs.

:mod:`engine.bilateral` (numpy/scipy) and :mod:`engine.bilateral_torch` solve the same system and
must reject the same inputs with the same messages; keeping those here means a change to the
problem's definition is made once, and a change to either solver touches only its own module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import VosError

__all__ = ["UNCERTAIN_LEVEL", "BilateralParams", "check_probabilities", "check_reference", "check_solve_shapes"]

_GRID_DIMS = 5
UNCERTAIN_LEVEL = 0.98  # the refiners' uncertain pixels: top-two margin (confidence) below this
_MIN_SIDE = 8  # smallest max_side: below this the working image has almost no spatial extent
_BISTOCHASTIC_ITERS = 10
# Floors keep divisions finite at vertices no confident pixel reaches (zero splatted confidence).
_EPS = 1e-10  # representable in float32
# Relative residual at which PCG stops before `iterations` (the reference uses 1e-5).
_CG_TOL = 1e-5


@dataclass(frozen=True)
class BilateralParams:
    """Parameters of the fast bilateral solver.

    Sigmas are in full-resolution pixels (spatial) and 8-bit intensity levels (luma, chroma).
    ``lam`` weighs smoothness against the data term; ``iterations`` caps the PCG iterations.
    ``max_side`` is the longer side of the working resolution (``None``: solve at full resolution).
    """

    sigma_spatial: float = 8.0
    sigma_luma: float = 4.0
    sigma_chroma: float = 4.0
    lam: float = 128.0
    iterations: int = 25
    max_side: int | None = 256

    def __post_init__(self) -> None:
        for name in ("sigma_spatial", "sigma_luma", "sigma_chroma"):
            value = getattr(self, name)
            if not _is_real(value) or not np.isfinite(value) or value <= 0:
                raise VosError(f"Bilateral solver parameter {name} must be a positive number, got {value!r}.")
        if not _is_real(self.lam) or not np.isfinite(self.lam) or self.lam < 0:
            raise VosError(f"Bilateral solver parameter lam must be zero or positive, got {self.lam!r}.")
        if not _is_int(self.iterations) or self.iterations < 1:
            raise VosError(f"Bilateral solver parameter iterations must be an integer >= 1, got {self.iterations!r}.")
        if self.max_side is not None and (not _is_int(self.max_side) or self.max_side < _MIN_SIDE):
            raise VosError(
                f"Bilateral solver parameter max_side must be None or an integer >= {_MIN_SIDE}, got {self.max_side!r}."
            )


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) of the working resolution: the frame shrunk so that its longer side is <= max_side."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_reference(shape: tuple[int, ...], is_uint8: bool, dtype: object) -> None:
    """Raise unless a reference frame of this shape and dtype is a non-empty (H, W, 3) uint8 image."""
    if len(shape) != 3 or shape[2] != 3:
        raise VosError(f"The bilateral solver reference must be an (H, W, 3) RGB image, got shape {tuple(shape)}.")
    if not is_uint8:
        raise VosError(f"The bilateral solver reference must be uint8, got {dtype}.")
    if shape[0] == 0 or shape[1] == 0:
        raise VosError(f"The bilateral solver reference is empty, shape {tuple(shape)}.")


def check_solve_shapes(shape: tuple[int, int], targets: tuple[int, ...], confidence: tuple[int, ...]) -> None:
    """Raise unless (K, H, W) or (H, W) targets and their confidence fit a grid built at (H, W) ``shape``."""
    shape, targets, confidence = tuple(shape), tuple(targets), tuple(confidence)
    single = len(targets) == 2
    stack = (1, *targets) if single else targets
    if len(stack) != 3 or stack[1:] != shape or stack[0] == 0:
        raise VosError(
            f"Bilateral solver targets must be (K, H, W) or (H, W) with H, W = {shape}, got shape {targets}."
        )
    if confidence not in (shape, (stack[0], *shape)) or (single and len(confidence) != 2):
        raise VosError(
            f"Bilateral solver confidence must be (H, W) or (K, H, W) matching targets {targets}, "
            f"got shape {confidence}."
        )


def check_probabilities(probs: tuple[int, ...], reference: tuple[int, ...] | None) -> None:
    """Raise unless (K+1, H, W) probabilities have a background, an object and the reference's size."""
    probs = tuple(probs)
    if len(probs) != 3 or probs[0] < 2:
        raise VosError(f"Probabilities must be (K+1, H, W) with a background and at least one object, got {probs}.")
    if reference is None or tuple(reference[:2]) != probs[1:]:
        raise VosError(f"The reference frame {reference} and the probabilities {probs} differ in size.")
