"""Labels near a boundary snapped to the frame's own edges, at its full resolution, after the refiners.

The learned refiner works at two thirds of a 480p frame and gives a residual at half of that, the
bilateral solver at 512 pixels: a boundary they give is placed to two or three pixels of the frame,
and nearly half of the defaults' wrong pixels lie within two pixels of the true boundary (README,
thirty-fifth round). A guided filter (He, Sun and Tang, ECCV 2010) of each label's mask, guided by
the frame's colours, fits the mask in each window as a linear function of the colours, so a
boundary follows the edge between two colours where the mask had it within a window's reach. Only
the pixels within ``band`` of a boundary between labels may change; each takes the label whose
filtered mask is highest there.

The filter's coefficients are computed at ``1 / subsample`` of the resolution and upsampled (the
"fast guided filter", He and Sun 2015), then applied to the full-resolution colours at the band's
pixels only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.objects import channel_argmax, mask_box, set_label

__all__ = ["EdgeSnap", "SnapParams"]

REFERENCE_SIDE = 480  # the pixel sizes below are for a frame of this shorter side; scaled to others


@dataclass(frozen=True)
class SnapParams:
    radius: int = 8  # the filter's window is (2 radius + 1) pixels wide
    eps: float = 1e-4  # regularisation of the colours' covariance (colours in [0, 1])
    band: int = 6  # pixels of a boundary between labels a label may change within
    subsample: int = 3  # the coefficients at this fraction of the resolution (2: the same CV, 20-40% slower)


def _inverse_sym3(v: list[np.ndarray]) -> list[np.ndarray]:
    """Per-pixel inverse of symmetric 3x3 matrices given as their six entries (xx, xy, xz, yy, yz,
    zz), each (h, w) -> the inverse's six entries, by the adjugate."""
    xx, xy, xz, yy, yz, zz = v
    a = yy * zz - yz * yz
    b = xz * yz - xy * zz
    c = xy * yz - xz * yy
    det = xx * a + xy * b + xz * c
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    d = xx * zz - xz * xz
    e = xy * xz - xx * yz
    f = xx * yy - xy * xy
    return [a / det, b / det, c / det, d / det, e / det, f / det]


class EdgeSnap:
    """``snap(frame, probs) -> probs``: labels within ``band`` of a boundary moved to the frame's edges."""

    def __init__(self, params: SnapParams | None = None) -> None:
        self.params = params or SnapParams()

    def __call__(self, frame: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
        p = self.params
        ids = channel_argmax(probs).cpu().numpy()
        h, w = ids.shape
        scale = min(h, w) / REFERENCE_SIDE
        radius = max(1, round(p.radius * scale))
        band = max(1, round(p.band * scale))
        box = mask_box(ids > 0, radius + band + 2)
        if box is None:
            return probs
        labels = ids[box]
        kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
        near = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
        if not near.any():
            return probs
        snapped = labels.copy()
        snapped[near] = self._snap(np.ascontiguousarray(frame[box]), labels, near, radius)
        changed = snapped != labels
        if not changed.any():
            return probs
        probs = probs.clone()
        for label in np.unique(snapped[changed]):
            set_label(probs, box, changed & (snapped == label), int(label))
        return probs

    def _snap(self, image: np.ndarray, labels: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
        """The label of each ``near`` pixel of the window ``image`` (RGB uint8) whose labels are
        ``labels``: the one whose filtered mask is highest there. The filter is linear and keeps a
        constant, so the background's filtered mask is one less the objects'."""
        p = self.params
        s = max(1, p.subsample)
        h, w = labels.shape
        hs, ws = max(1, h // s), max(1, w // s)
        guide = image.astype(np.float32) / 255.0
        small = cv2.resize(guide, (ws, hs), interpolation=cv2.INTER_AREA) if s > 1 else guide
        r = max(1, radius // s)

        def box(x: np.ndarray) -> np.ndarray:
            return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)

        colours = [np.ascontiguousarray(small[..., c]) for c in range(3)]
        means = [box(c) for c in colours]
        pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
        cov = [box(colours[i] * colours[j]) - means[i] * means[j] for i, j in pairs]
        for diagonal in (0, 3, 5):
            cov[diagonal] = cov[diagonal] + p.eps
        inv = _inverse_sym3(cov)
        rows = ((0, 1, 2), (1, 3, 4), (2, 4, 5))  # the inverse's entries of each row
        full = guide[near].T  # (3, N): the colours at the band's pixels, full resolution
        objects = [int(k) for k in np.flatnonzero(np.bincount(labels.ravel())) if k != 0]
        filtered = []
        for label in objects:
            mask = (labels == label).astype(np.float32)
            mask_small = cv2.resize(mask, (ws, hs), interpolation=cv2.INTER_AREA) if s > 1 else mask
            mean_p = box(mask_small)
            cross = [box(colours[c] * mask_small) - means[c] * mean_p for c in range(3)]
            a = [sum(inv[rows[c][k]] * cross[k] for k in range(3)) for c in range(3)]
            b = mean_p - sum(a[c] * means[c] for c in range(3))
            coefficients = [box(x) for x in (*a, b)]
            if s > 1:
                coefficients = [cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR) for x in coefficients]
            filtered.append(sum(coefficients[c][near] * full[c] for c in range(3)) + coefficients[3][near])
        scores = np.stack([1.0 - sum(filtered), *filtered])  # (1 + objects, N)
        return np.array([0, *objects], np.uint8)[scores.argmax(0)]
