"""Reference pixels that follow their objects: with several objects, where each one is now.

Retrieval ranks a bank pixel by its embedding distance plus its squared distance in the frame
weighted by ``spatial_weight`` squared (engine.retrieval). A reference pixel's position is where
its object was on the annotated frame, so once two objects of one kind have moved, the one that now
stands where the other was annotated is nearer to the other's reference pixels. With several objects the bank's
object pixels are compared as if moved with their object: each by how far its object's centre has
moved since its annotated frame (background pixels stay where they are). With one object nothing
moves: following it changed CV J&F by -0.04 / -0.15 (seeds 0 / 1; README, fortieth round).
"""

from __future__ import annotations

import torch

from engine.memory import PixelSet
from engine.model import coordinate_grid


def object_centres(probs: torch.Tensor) -> torch.Tensor:
    """(K + 1, gh, gw) grid probabilities -> (K + 1, 2) each slot's centre (x, y), normalised as the
    grid's coordinates (engine.model.coordinate_grid): the mean of the cells it holds at least half
    of, weighted by its probability; NaN for a slot that holds no cell."""
    xy = coordinate_grid(*probs.shape[1:], 0.0, device=probs.device)[:2]  # (2, gh, gw)
    weights = probs.float() * (probs >= 0.5)
    mass = weights.sum(dim=(1, 2))
    return (weights[:, None] * xy[None]).sum(dim=(2, 3)) / mass[:, None]


class ObjectCentres:
    """Where each object is now (its last centre seen), and how far each reference pixel's object has
    moved since the reference pixel's frame."""

    def __init__(self) -> None:
        self._now: torch.Tensor | None = None  # (K + 1, 2); NaN where never seen

    def annotated(self, centres: torch.Tensor) -> None:
        """An annotated frame's centres ((K + 1, 2), :func:`object_centres` of its mask): the
        objects it shows are there now; the others keep their last centre."""
        self._grow(centres)
        seen = ~torch.isnan(centres).any(dim=1)
        self._now[seen] = centres[seen]

    def update(self, centres: torch.Tensor, lost: torch.Tensor) -> None:
        """A frame's centres ((K + 1, 2), of the previous probabilities moved to it); an object that
        is ``lost`` ((K,) bool) or holds no cell keeps its last centre."""
        self._grow(centres)
        keep = torch.isnan(centres).any(dim=1)
        keep[1:] |= lost
        keep[0] = True  # the background does not move
        self._now[~keep] = centres[~keep]

    def followed(self, pixels: PixelSet, origins: torch.Tensor) -> PixelSet:
        """``pixels`` (the bank's first, then the online memory's) with each of the bank's object
        pixels' (x, y) moved by its object's way from ``origins`` ((N, 2), the bank's: its object's
        centre on its own frame) to the object's centre now. The memory's pixels are recent and stay
        where they are, as does the background. The keys are not copied."""
        if self._now is None:
            return pixels
        n = len(origins)
        labels = pixels.labels[:n]
        shift = torch.nan_to_num(self._now[labels] - origins, nan=0.0)
        shift[labels == 0] = 0.0
        coords = pixels.coords.clone()
        coords[:n, :2] += shift.to(coords.dtype)
        return PixelSet(pixels.keys, coords, pixels.labels)

    def _grow(self, centres: torch.Tensor) -> None:
        """Room for every slot of ``centres`` (objects registered since), NaN until seen."""
        if self._now is None:
            self._now = torch.full_like(centres, float("nan"))
        elif len(self._now) < len(centres):
            self._now = torch.cat([self._now, self._now.new_full((len(centres) - len(self._now), 2), float("nan"))])
