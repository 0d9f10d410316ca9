"""Objects cut from one video and pasted into another: distractors, look-alikes and occluders.

A pasted object keeps its own articulation (its mask and pixels, frame by frame, from its source
video) but not its source's global motion: each frame's cut-out is centred, scaled and placed on a
:class:`Path` of its own. The host's labels are updated by layer order: an object pasted in front
hides what it covers (those pixels take its id), one pasted behind shows only where the host's
objects are not.

Used by ``benchmarks/multi_object_dev.py`` (the fixed multi-object dev clips) and usable by training
samples that need a second object of the same kind. Everything is deterministic given its inputs;
randomness comes only from the ``numpy.random.Generator`` a caller passes to :meth:`Path.random`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Path:
    """Where a pasted object is at frame t: its centre (x, y) in pixels and its scale."""

    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels a frame
    scale: float
    scale_swing: float = 0.0  # relative amplitude of a slow scale oscillation (approach / recede)
    period: float = 60.0  # frames of one oscillation
    flip: bool = False  # mirror the object left-right

    def at(self, t: int) -> tuple[float, float, float]:
        x = self.start[0] + self.velocity[0] * t
        y = self.start[1] + self.velocity[1] * t
        return x, y, self.scale * (1.0 + self.scale_swing * np.sin(2 * np.pi * t / self.period))

    @staticmethod
    def random(
        rng: np.random.Generator,
        start: tuple[float, float],
        scale: float,
        *,
        speed: float = 2.0,
        scale_swing: float = 0.2,
    ) -> Path:
        angle = rng.uniform(0, 2 * np.pi)
        velocity = (speed * np.cos(angle), 0.4 * speed * np.sin(angle))  # mostly sideways, like most footage
        return Path(
            start=start,
            velocity=velocity,
            scale=scale,
            scale_swing=float(rng.uniform(0, scale_swing)),
            period=float(rng.uniform(40, 90)),
            flip=bool(rng.random() < 0.5),
        )


def cut_out(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The object's bounding box of ``image`` (H, W, 3) and of ``mask`` (H, W) bool; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def paste(
    image: np.ndarray,
    ids: np.ndarray,
    patch: np.ndarray,
    patch_mask: np.ndarray,
    *,
    centre: tuple[float, float],
    scale: float,
    object_id: int,
    in_front: bool,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``patch`` (h, w, 3) with its ``patch_mask`` (h, w) bool into ``image`` and ``ids``.

    Returns new arrays (the inputs are not changed). The object's pixels are blended over a
    one-pixel soft edge, so it carries no cut-out seam a network could key on; its label is the hard
    mask. ``in_front=False`` puts it behind every object already in ``ids``.
    """
    if flip:
        patch, patch_mask = patch[:, ::-1], patch_mask[:, ::-1]
    h, w = patch_mask.shape
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    patch = cv2.resize(np.ascontiguousarray(patch), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(patch_mask.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    hard = alpha >= 0.5
    soft = cv2.GaussianBlur(hard.astype(np.float32), (3, 3), 0.7)
    x0, y0 = round(centre[0] - out_w / 2), round(centre[1] - out_h / 2)
    H, W = ids.shape
    # The part of the patch inside the image.
    px0, py0 = max(0, -x0), max(0, -y0)
    px1, py1 = min(out_w, W - x0), min(out_h, H - y0)
    image, ids = image.copy(), ids.copy()
    if px1 <= px0 or py1 <= py0:
        return image, ids
    region = (slice(y0 + py0, y0 + py1), slice(x0 + px0, x0 + px1))
    crop = (slice(py0, py1), slice(px0, px1))
    a, obj = soft[crop], hard[crop]
    if not in_front:
        free = ids[region] == 0
        a, obj = a * free, obj & free
    blended = image[region].astype(np.float32) * (1 - a[..., None]) + patch[crop].astype(np.float32) * a[..., None]
    image[region] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    ids[region][obj] = object_id
    return image, ids
