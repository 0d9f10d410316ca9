"""Thin parts (lines, ropes, masts) followed at the frame's own resolution, after the refiners.

Retrieval labels a stride-8 grid and the learned refiner works at two thirds of a 480p frame, so a
part one or two pixels wide is lost on the first frame after an annotation and never comes back:
a kite's lines are a tenth of kite-walk's mask. Adding the ground truth's parts thinner than 5
pixels to the cross-validation's outputs would raise J&F by 3 points over the 30 training
sequences (kite-walk F 0.63 -> 0.99), more than any change of the last rounds (README,
thirty-fifth round).

What an annotation shows of an object's thin part is followed from frame to frame:

- An object qualifies when its annotated mask has enough thin pixels (under ``open_size`` wide)
  far from its body (``reach`` pixels beyond its opened mask): lines and masts, not the jagged edge
  of a body, fingers or a tail. Over the 30 training sequences two qualify (kite-walk and boat).
- On the annotated frame it picks the line response (a grey top-hat, for lines brighter than what
  is around them, or black-hat, for darker ones) that is stronger at its thin part's core (the
  ``core_quantile`` of its responses: an annotation is drawn wider than its line), and takes
  ``level_share`` of the core's response as the level a pixel of the line reaches.
- On each later frame the pixels above that level, within ``search`` pixels of the object's thin
  part on the frame before, outside every object, that are themselves thin, join the object where
  they touch its mask, or lie on its thin part of the frame before in a piece at least
  ``min_length`` long (a kite's bright lines hang from a dark bar, which neither response finds).
  More than ``cap`` times the annotated thin part is taken as a texture, not a line, and nothing joins.

It works on the refined probabilities: the pixels it adds become the object's. Not for two threads
at once; frames in order (engine.refine_stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.objects import channel_argmax, mask_box, set_label

__all__ = ["ThinParams", "ThinParts"]

REFERENCE_SIDE = 480  # the pixel sizes below are for a frame of this shorter side; scaled to others
REFERENCE_AREA = 854 * 480  # ``min_far`` is in pixels of a frame this large


@dataclass(frozen=True)
class ThinParams:
    open_size: int = 5  # a part narrower than this many pixels is thin
    reach: int = 21  # a thin pixel this far beyond the opened mask is far from the body
    min_far: int = 300  # far thin pixels an annotation needs for its object to qualify
    response_size: int = 7  # the top-hat's structuring element: lines up to about this wide respond
    search: int = 12  # how far a thin part may move between frames, in pixels
    core_quantile: float = 0.9  # of the annotated thin part's responses: its line's core
    level_share: float = 0.4  # of the core's response: the level a pixel of the line reaches
    min_level: float = 4.0  # grey levels; below it a response is noise
    min_length: int = 40  # a piece not touching the object joins through its thin part before when this long
    cap: float = 2.0  # more new thin pixels than this times the annotated thin part: none


def _odd(size: float) -> int:
    return max(3, int(round(size)) | 1)


def _disk(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


@dataclass
class _Track:
    """One qualifying object: its response, level and annotated thin area, and its thin part on the
    frame before."""

    channel: int
    black: bool  # black-hat (dark lines) or top-hat (bright lines)
    level: float
    area: int
    thin: np.ndarray  # (H, W) bool


class ThinParts:
    """``thin(frame, probs) -> probs`` in frame order, after :meth:`start` on each annotated frame."""

    def __init__(self, params: ThinParams | None = None) -> None:
        self.params = params or ThinParams()
        self._tracks: list[_Track] = []
        self._scale = 1.0

    @property
    def active(self) -> bool:
        """Whether an object is followed (else the probabilities pass unchanged)."""
        return bool(self._tracks)

    def _size(self, pixels: float) -> int:
        return _odd(pixels * self._scale)

    def _thin(self, mask: np.ndarray) -> np.ndarray:
        """The parts of ``mask`` narrower than ``open_size``: the mask less its opening."""
        m = mask.astype(np.uint8)
        return (m & (1 - cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(self._size(self.params.open_size))))).astype(bool)

    def _response(self, frame: np.ndarray, black: bool) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        op = cv2.MORPH_BLACKHAT if black else cv2.MORPH_TOPHAT
        return cv2.morphologyEx(grey, op, _disk(self._size(self.params.response_size)))

    def start(self, frame: np.ndarray, probs: torch.Tensor) -> None:
        """An annotated frame (RGB, its (K + 1, H, W) probabilities): which objects qualify, and how
        their thin parts respond. Replaces what was followed before."""
        p = self.params
        h, w = frame.shape[:2]
        self._scale = min(h, w) / REFERENCE_SIDE
        ids = channel_argmax(probs).cpu().numpy()
        min_far = p.min_far * (h * w) / REFERENCE_AREA
        self._tracks = []
        responses = None
        for channel in range(1, probs.shape[0]):
            mask = ids == channel
            box = mask_box(mask, self._size(p.reach))
            if box is None:
                continue
            inside = mask[box].astype(np.uint8)
            body = cv2.morphologyEx(inside, cv2.MORPH_OPEN, _disk(self._size(p.open_size)))
            thin_inside = (inside & (1 - body)).astype(bool)  # what _thin gives, in the box
            far = thin_inside & ~cv2.dilate(body, _disk(self._size(p.reach))).astype(bool)
            if np.count_nonzero(far) < min_far:
                continue
            thin = np.zeros_like(mask)
            thin[box] = thin_inside
            if responses is None:
                responses = {black: self._response(frame, black) for black in (False, True)}
            # At the line's core: an annotation drawn wider than its line has flanks of background,
            # where the opposite response is high (a bright flank beside a dark line).
            core = {b: float(np.quantile(r[thin], p.core_quantile)) for b, r in responses.items()}
            black = core[True] > core[False]
            level = max(p.level_share * core[black], p.min_level)
            self._tracks.append(_Track(channel, black, level, int(np.count_nonzero(thin)), thin))

    def __call__(self, frame: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
        """A frame's refined (K + 1, H, W) probabilities -> with the followed thin parts added."""
        if not self._tracks:
            return probs
        ids = channel_argmax(probs).cpu().numpy()
        added = []
        for track in self._tracks:
            mask = ids == track.channel
            new = self._follow(frame, ids, mask, track)
            track.thin = self._thin_in_box(mask)
            if new is not None:
                box, piece = new
                track.thin[box] |= piece
                added.append((track.channel, new))
        if not added:
            return probs
        probs = probs.clone()
        for channel, (box, piece) in added:
            set_label(probs, box, piece, channel)
        return probs

    def _thin_in_box(self, mask: np.ndarray) -> np.ndarray:
        """:meth:`_thin` of a whole frame's mask, computed in the box around it."""
        thin = np.zeros_like(mask)
        box = mask_box(mask, self._size(self.params.open_size))
        if box is not None:
            thin[box] = self._thin(mask[box])
        return thin

    def _follow(self, frame: np.ndarray, ids: np.ndarray, mask: np.ndarray, track: _Track):
        """The thin pixels that join the object on this frame: (box, (h, w) bool in it), or None."""
        p = self.params
        search = round(p.search * self._scale)
        # Everything happens in the box the search can reach, with a margin for the top-hat.
        box = mask_box(track.thin, search + self._size(p.response_size))
        if box is None or not mask.any():
            return None
        inside = mask[box]
        before = track.thin[box]
        region = cv2.dilate(before.astype(np.uint8), _disk(2 * search + 1)).astype(bool)
        region &= ids[box] == 0
        found = self._response(np.ascontiguousarray(frame[box]), track.black) > track.level
        found &= region
        if not found.any():
            return None
        # Pieces that touch the object's mask, or that are long and lie on its thin part of the frame
        # before (a line whose link to the body, a dark bar between bright lines, is not found).
        count, labels, stats, _ = cv2.connectedComponentsWithStats(found.astype(np.uint8), connectivity=8)
        joined = np.zeros(count, dtype=bool)
        touching = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        joined[labels[touching & found]] = True
        long = np.hypot(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= p.min_length * self._scale
        on_before = np.zeros(count, dtype=bool)
        on_before[labels[before & found]] = True
        joined |= on_before & long
        joined[0] = False
        new = joined[labels] & found
        new &= ~cv2.morphologyEx(new.astype(np.uint8), cv2.MORPH_OPEN, _disk(self._size(p.open_size))).astype(bool)
        if not new.any() or np.count_nonzero(new) > p.cap * track.area:
            return None
        return box, new
