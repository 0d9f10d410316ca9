"""Pseudo-videos from single frames: a frame and random warps of it, as a static-image stage does.

Thirty training videos show few kinds of motion, and with cached backbone features (trainer.cache)
the only augmentation left is a window and a flip of the feature maps. A pseudo-video is a frame
and ``views`` warped copies of it, each under its own random affine warp (scale, rotation, shear,
shift, about the object's centre) and colour jitter: the object grows, turns and changes colour as
it can between distant frames of a real video, and its labels follow exactly. The warps are made
on the frames, before the backbone, so the cached features of a view are those of a real image.
What the warp brings in from beyond the frame is grey and labelled IGNORE.

Deterministic: the views of a frame are a pure function of (seed, sequence name, frame number).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from trainer.data import IGNORE

# The ImageNet mean colour: what the warp brings in from beyond the frame.
_FILL = (124, 116, 104)


def view_rng(seed: int, sequence: str, frame: int) -> np.random.Generator:
    """The generator of one frame's views, independent of which other frames are warped."""
    return np.random.default_rng([seed, zlib.crc32(sequence.encode()), frame])


def random_affine(
    rng: np.random.Generator,
    centre: tuple[float, float],
    size: tuple[int, int],
    *,
    scale: tuple[float, float] = (0.75, 1.3),
    rotate: float = 20.0,
    shear: float = 0.15,
    shift: float = 0.12,
) -> np.ndarray:
    """A (2, 3) affine map about ``centre`` (x, y): log-uniform scale, rotation (degrees), shear and
    a shift by up to ``shift`` of the frame's size (``size`` = (h, w))."""
    h, w = size
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    a = np.deg2rad(rng.uniform(-rotate, rotate))
    k = rng.uniform(-shear, shear)
    linear = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1.0, k], [0.0, 1.0]])
    c = np.asarray(centre, dtype=np.float64)
    moved = c + rng.uniform(-shift, shift, size=2) * np.array([w, h])
    return np.hstack([linear, (moved - linear @ c)[:, None]])


def jitter_colour(image: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """(H, W, 3) uint8 RGB with random brightness, contrast, saturation and a small hue turn."""
    out = image.astype(np.float32)
    grey = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = grey[..., None] + (out - grey[..., None]) * rng.uniform(1 - strength, 1 + strength)  # saturation
    out = (out - grey.mean()) * rng.uniform(1 - strength, 1 + strength) + grey.mean()  # contrast
    out = out * rng.uniform(1 - strength, 1 + strength)  # brightness
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-9, 10))) % 180  # OpenCV hue: 0..179
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def warp_views(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, views: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``views`` warped copies of one frame: [(image (H, W, 3) uint8, labels (H, W) int64)].

    ``labels``: 0 background, 1.. objects, IGNORE. Each view is warped about the centre of the
    frame's objects (the frame's centre when it has none), labels by their nearest source pixel.
    """
    h, w = labels.shape
    ys, xs = np.nonzero(labels > 0)
    centre = (float(xs.mean()), float(ys.mean())) if len(xs) else (w / 2, h / 2)
    out = []
    for _ in range(views):
        matrix = random_affine(rng, centre, (h, w))
        warped = cv2.warpAffine(
            image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_FILL
        )
        moved = cv2.warpAffine(
            labels.astype(np.int16),
            matrix,
            (w, h),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=IGNORE,
        )
        out.append((jitter_colour(warped, rng), moved.astype(np.int64)))
    return out
