"""State kept by a video session, one small class per kind.

- :class:`ObjectRegistry`: the user's object ids <-> tensor slots (slot 0 is background).
- :class:`PixelSet`: embeddings, coordinates and labels of a set of pixels.
- :class:`ReferenceBank`: every pixel of the annotated frames; bounded by frames, never by the
  online memory's eviction (see the class).
- :class:`OnlineMemory`: confidently labelled pixels of later frames; bounded, oldest frame first
  out. It never holds annotated pixels, so eviction can never remove them. How many of a frame's
  pixels each label gives it: :func:`memory_quotas`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import VosError


class ObjectRegistry:
    """Maps user object ids (as in the mask, 1..255) to slots 1..K; 0 is background in both."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    @property
    def num_slots(self) -> int:
        """K + 1: background and each object."""
        return len(self.ids) + 1

    def register(self, ids: list[int]) -> None:
        for object_id in ids:
            if object_id <= 0 or object_id > 255:
                raise VosError(f"Object id {object_id} is out of range; ids must be 1 to 255.")
            if object_id not in self.ids:
                self.ids.append(object_id)

    def to_slots(self, id_mask: np.ndarray) -> np.ndarray:
        """(H, W) user ids -> (H, W) slots; every nonzero id must be registered."""
        lut = np.zeros(256, dtype=np.int64)
        lut[self.ids] = np.arange(1, self.num_slots)
        return lut[id_mask]

    def to_ids(self, slots: np.ndarray) -> np.ndarray:
        """(H, W) slots -> (H, W) uint8 user ids."""
        lut = np.array([0, *self.ids], dtype=np.uint8)
        return lut[slots]


@dataclass
class PixelSet:
    """N pixels: ``keys`` (N, D) unit embeddings, ``coords`` (N, 3) normalised (x, y, t), ``labels`` (N,)."""

    keys: torch.Tensor
    coords: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def subset(self, index: torch.Tensor | slice) -> PixelSet:
        """The pixels at ``index``; the labels too where there is one per pixel (a frame's have none)."""
        labels = self.labels[index] if len(self.labels) == len(self) else self.labels
        return PixelSet(self.keys[index], self.coords[index], labels)

    @staticmethod
    def concat(parts: list[PixelSet]) -> PixelSet:
        return PixelSet(
            torch.cat([p.keys for p in parts]),
            torch.cat([p.coords for p in parts]),
            torch.cat([p.labels for p in parts]),
        )


class ReferenceBank:
    """Pixels of annotated frames with their given labels.

    Bounded by frames, not by eviction of pixels: a frame that introduced an object (the first
    annotation, and every later one with an object id not seen before) stays for the whole video,
    so no object ever loses its own reference; of the other annotated frames (corrections of
    objects already tracked) only the ``recent`` latest stay, older corrections leave first. The
    bank so holds at most (objects + ``recent``) frames however many frames are annotated.
    Each frame may carry its pixels' origins ((N, 2): where each pixel's object was on that frame;
    engine.follow), kept in the same order as the pixels.
    """

    def __init__(self, recent: int = 4) -> None:
        if recent < 0:
            raise VosError("The number of recent reference frames must be zero or more.")
        self._permanent: list[tuple[PixelSet, torch.Tensor | None]] = []
        self._recent: deque[tuple[PixelSet, torch.Tensor | None]] = deque(maxlen=recent)
        self._cache: PixelSet | None = None
        self._origins: torch.Tensor | None = None

    def add(self, pixels: PixelSet, *, permanent: bool = True, origins: torch.Tensor | None = None) -> None:
        """``permanent``: the frame introduced an object (kept); else it is a correction (one of the recent)."""
        if permanent:
            self._permanent.append((pixels, origins))
        else:
            self._recent.append((pixels, origins))
        self._cache = None
        self._origins = None

    @property
    def frames(self) -> int:
        return len(self._permanent) + len(self._recent)

    def __len__(self) -> int:
        return sum(len(p) for p, _ in (*self._permanent, *self._recent))

    def pixels(self) -> PixelSet | None:
        parts = [p for p, _ in (*self._permanent, *self._recent)]
        if self._cache is None and parts:
            self._cache = PixelSet.concat(parts) if len(parts) > 1 else parts[0]
        return self._cache

    def origins(self) -> torch.Tensor | None:
        """(N, 2) the origins of :meth:`pixels`, in their order; None unless every frame has them."""
        parts = [o for _, o in (*self._permanent, *self._recent)]
        if self._origins is None and parts and all(o is not None for o in parts):
            self._origins = torch.cat(parts)
        return self._origins


def memory_quotas(counts: list[int], quota: int, power: float) -> list[int]:
    """How many of its confident cells each label gives the memory this frame (slot 0: background).

    ``counts``: confident cells per slot. At most ``quota`` in all (all of them when they are
    fewer). The background gives its share by count. The objects share the rest as their counts
    to the ``power``: 1 gives each object its share by count, as drawing the cells at random does;
    below 1 a small object gives more than its share, so that a large look-alike's pixels do not
    fill the memory (0: the same number each). An object with fewer cells than its share gives all
    of them, and the others share what it leaves.
    """
    total = sum(counts)
    if total <= quota:
        return list(counts)
    take = [0] * len(counts)
    take[0] = min(counts[0], round(quota * counts[0] / total))
    left = quota - take[0]
    open_ = [k for k in range(1, len(counts)) if counts[k] > 0]
    while left > 0 and open_:
        weights = {k: float(counts[k]) ** power for k in open_}
        scale = left / sum(weights.values())
        give = {k: min(counts[k] - take[k], int(scale * weights[k])) for k in open_}
        if not any(give.values()):  # fewer left than objects: one each, the heaviest first
            give = {k: 1 for k in sorted(open_, key=lambda k: -weights[k])[:left]}
        for k, n in give.items():
            take[k] += n
            left -= n
        open_ = [k for k in open_ if take[k] < counts[k]]
    take[0] += min(left, counts[0] - take[0])  # every object gave all it has: the background fills in
    return take


class OnlineMemory:
    """At most ``capacity`` pixels; when full, whole frames leave oldest first (FIFO by frame)."""

    def __init__(self, capacity: int) -> None:
        self._frames: deque[PixelSet] = deque()
        self._size = 0
        self._cache: PixelSet | None = None
        self.resize(capacity)

    def __len__(self) -> int:
        return self._size

    def add(self, pixels: PixelSet) -> None:
        if self.capacity == 0 or len(pixels) == 0:
            return
        if len(pixels) > self.capacity:
            pixels = pixels.subset(slice(self.capacity))
        self._frames.append(pixels)
        self._size += len(pixels)
        self._cache = None
        self._evict()

    def resize(self, capacity: int) -> None:
        """A new capacity (a session tracking more objects keeps more); oldest frames leave first."""
        if capacity < 0:
            raise VosError("The online memory size must be zero or more.")
        self.capacity = capacity
        self._evict()

    def _evict(self) -> None:
        """Whole frames leave, oldest first, until the memory is within its capacity."""
        while self._size > self.capacity:
            self._size -= len(self._frames.popleft())
            self._cache = None

    def clear(self) -> None:
        self._frames.clear()
        self._size = 0
        self._cache = None

    def pixels(self) -> PixelSet | None:
        if self._cache is None and self._frames:
            self._cache = PixelSet.concat(list(self._frames))
        return self._cache
