"""Colours: the DAVIS / PASCAL VOC palette and the overlay drawn on the output video."""

from __future__ import annotations

import cv2
import numpy as np


def davis_palette() -> np.ndarray:
    """(256, 3) uint8, the palette of DAVIS and PASCAL VOC masks (index 1 red, 2 green, ...)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colourise(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 RGB colours of the (256, 3) ``palette``: a table lookup
    by ``cv2.LUT``, several times faster than ``palette[ids]`` (6 ms at 854x480)."""
    table = np.ascontiguousarray(palette, dtype=np.uint8).reshape(1, 256, 3)
    return cv2.LUT(cv2.merge([ids, ids, ids]), table)


def draw_overlay(frame: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint each object of ``ids`` (H, W) in its palette colour over ``frame`` (H, W, 3) RGB, outlined.

    OpenCV passes with a mask instead of boolean indexing (27 -> 9 ms of CPU time at 480p), over the
    objects' bounding box only (plus the two pixels the outline needs), with the colours looked up
    by :func:`colourise`: on bear's frames (854x480, one core, idle) 4.2 -> 0.3 ms, the same pixels.
    """
    fg = (ids > 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(fg)
    out = frame.copy()
    if w == 0:
        return out
    # The outline needs the ids one pixel beyond the box, and its thickening one more.
    y0, x0 = max(0, y - 2), max(0, x - 2)
    y1, x1 = min(ids.shape[0], y + h + 2), min(ids.shape[1], x + w + 2)
    box = (slice(y0, y1), slice(x0, x1))
    near, inside = ids[box], fg[box]
    colours = colourise(near, palette)
    tinted = cv2.addWeighted(frame[box], 1.0 - alpha, colours, alpha, 0.0)
    cv2.copyTo(tinted, inside, out[box])
    # An outline where the id changes to a neighbour, thickened to stay visible after compression.
    edge = np.zeros(near.shape, dtype=np.uint8)
    edge[:, :-1] |= near[:, :-1] != near[:, 1:]
    edge[:-1, :] |= near[:-1, :] != near[1:, :]
    edge = cv2.dilate(edge, np.ones((3, 3), np.uint8)) & inside
    cv2.copyTo(colours, edge, out[box])
    return out
