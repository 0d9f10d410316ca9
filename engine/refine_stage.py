"""The session's last stage: a frame the network saw is refined; a frame carried at the grid (its
probabilities moved along the optical flow) is refined by the carried frames' refiner; a frame
carried whole takes the last output moved along the flow, not refined again.

A carried frame's output needs the output of the frame before it, which the refinement (perhaps on
another thread, in frame order) has not made yet when the frame is stepped. So stepping gives a
:class:`CarriedFrame` (the flow, and the frame before's output where that frame was given a mask,
which is never refined), and :class:`RefineStage` turns it into probabilities when its turn comes.
Likewise a frame carried at the grid between two key frames waits for the second (engine.between):
its :class:`CarriedProbs` hold a :class:`PendingProbs` until then.

Last, a refined frame's labels near a boundary are snapped to the frame's edges (engine.edge_snap),
and the thin parts an annotation showed are followed at the frame's own resolution
(engine.thin_parts); a frame given a mask, never refined, starts them again (:meth:`RefineStage.given`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from engine.edge_snap import EdgeSnap
from engine.errors import VosError
from engine.motion import warp_frame
from engine.thin_parts import ThinParts

__all__ = ["CarriedFrame", "CarriedProbs", "PendingProbs", "RefineStage"]


@dataclass(frozen=True)
class CarriedFrame:
    """A frame carried whole: its output is the frame before's, moved along ``flow``."""

    flow: torch.Tensor  # (h, w, 2) backward flow in pixels of the flow's image (engine.motion.GridFlow)
    before: torch.Tensor | None = None  # the frame before's output when it was given (a mask); None: refined


class PendingProbs:
    """Probabilities made later, on the stepping thread; :meth:`get` waits for them."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._probs: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set(self, probs: torch.Tensor) -> None:
        self._probs = probs
        self._ready.set()

    def get(self) -> torch.Tensor:
        self._ready.wait()
        return self._probs


@dataclass(frozen=True)
class CarriedProbs:
    """A frame carried at the grid: the key frames' probabilities moved along the flow and
    upsampled, for the carried frames' refiner; pending until the next key frame is stepped
    (engine.between)."""

    probs: torch.Tensor | PendingProbs  # (K + 1, H, W)

    @property
    def ready(self) -> bool:
        return not isinstance(self.probs, PendingProbs) or self.probs.ready

    def value(self) -> torch.Tensor:
        """The probabilities, once made (waits for them)."""
        return self.probs.get() if isinstance(self.probs, PendingProbs) else self.probs


class RefineStage:
    """``stage(frame, probs) -> probs`` in frame order: ``refiner`` (None: unchanged) for probabilities,
    ``carried`` (default: ``refiner``) for :class:`CarriedProbs`, the last output moved along the flow
    for a :class:`CarriedFrame`; then ``snap`` (None: none) moves the refined labels near a boundary to
    the frame's edges (not a :class:`CarriedFrame`'s, which is not refined again), and ``thin`` (None:
    none) adds the thin parts it follows. A frame given a mask goes to :meth:`given` in its place. Not
    for two threads at once."""

    def __init__(self, refiner, carried=None, thin: ThinParts | None = None, snap: EdgeSnap | None = None) -> None:
        self.refiner = refiner
        self.carried = carried if carried is not None else refiner
        self.thin = thin
        self.snap = snap
        self._last: torch.Tensor | None = None

    def __call__(self, frame: np.ndarray, probs: torch.Tensor | CarriedProbs | CarriedFrame) -> torch.Tensor:
        if isinstance(probs, CarriedFrame):
            before = probs.before if probs.before is not None else self._last
            if before is None:
                raise VosError("A carried frame needs the output of the frame before it, refined first.")
            out = warp_frame(before, probs.flow)
        elif isinstance(probs, CarriedProbs):
            carried = probs.value()
            out = self._snapped(frame, self.carried(frame, carried) if self.carried is not None else carried)
        else:
            out = self.refine(frame, probs)
        if self.thin is not None:
            out = self.thin(frame, out)
        self._last = out
        return out

    def given(self, frame: np.ndarray, probs: torch.Tensor) -> None:
        """A frame given a mask (its probabilities, not refined), in its place in frame order: the
        thin parts are followed from it."""
        if self.thin is not None:
            self.thin.start(frame, probs)

    def refine(self, frame: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
        """The refiner (unchanged without one) and the snap, keeping nothing: safe beside the stage's
        own thread (the thin parts, which follow from frame to frame, are not applied)."""
        return self._snapped(frame, self.refiner(frame, probs) if self.refiner is not None else probs)

    def _snapped(self, frame: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
        return self.snap(frame, probs) if self.snap is not None else probs
