"""Masks in and out: binary, palette-indexed and RGB colour masks; palette PNGs written per frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import VosError
from engine.objects import object_ids
from vosctl.palette import davis_palette

# More distinct grey levels than this is a soft (anti-aliased) mask, not a set of object ids.
MAX_GREY_OBJECTS = 32


@dataclass
class Mask:
    """``ids`` (H, W) uint8 object ids (0 background); ``palette`` (256, 3) for writing them back."""

    ids: np.ndarray
    palette: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def object_ids(self) -> list[int]:
        return [int(i) for i in np.unique(self.ids) if i != 0]


def _from_grey(grey: np.ndarray, notes: list[str]) -> np.ndarray:
    values = np.unique(grey)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}:
        return object_ids(grey)  # the binary rule lives in the engine, for its API too
    if len(values) - 1 > MAX_GREY_OBJECTS:
        notes.append("The mask has many grey levels; it was read as binary with a threshold at half.")
        return (grey >= 128).astype(np.uint8)
    return grey.astype(np.uint8)


def _from_colour(rgb: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct colour is one object; DAVIS palette colours keep their palette index."""
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    colours, inverse = np.unique(codes, return_inverse=True)
    if len(colours) - (0 in colours) > 255:
        raise VosError("The colour mask has more than 255 colours; give one flat colour per object.")
    davis = davis_palette()
    davis_codes = (davis[:, 0].astype(np.int64) << 16) | (davis[:, 1].astype(np.int64) << 8) | davis[:, 2]
    palette = davis.copy()
    lut = np.zeros(len(colours), dtype=np.uint8)
    if np.isin(colours, davis_codes).all():
        lut[:] = [int(np.nonzero(davis_codes == c)[0][0]) for c in colours]
    else:
        next_id = 1
        for i, code in enumerate(colours):
            if code == 0:
                continue
            lut[i] = next_id
            palette[next_id] = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            next_id += 1
    return lut[inverse].reshape(rgb.shape[:2]), palette


def _opaque(alpha: np.ndarray, notes: list[str]) -> np.ndarray:
    """(H, W) alpha -> (H, W) bool, at least half opaque; transparent pixels are background."""
    if ((alpha > 0) & (alpha < 255)).any():
        notes.append("The mask's transparency has soft edges; pixels at least half opaque were read as object.")
    return alpha >= 128


def _from_palette(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Index = object id; an index the PNG marks transparent is background."""
    ids = np.array(image, dtype=np.uint8)
    raw = image.getpalette() or []
    palette = davis_palette()
    entries = np.array(raw[:768], dtype=np.uint8).reshape(-1, 3)
    palette[: len(entries)] = entries
    transparency = image.info.get("transparency")
    if isinstance(transparency, int):
        ids = np.where(ids == transparency, 0, ids).astype(np.uint8)
    elif isinstance(transparency, bytes):
        alpha = np.full(256, 255, dtype=np.uint8)
        alpha[: len(transparency)] = np.frombuffer(transparency, dtype=np.uint8)[:256]
        ids = np.where(_opaque(alpha[ids], notes), ids, 0).astype(np.uint8)
    return ids, palette


def _from_rgb(rgb: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _from_grey(rgb[..., 0], notes), davis_palette()
    return _from_colour(rgb, notes)


def _from_rgba(rgba: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Transparent pixels are background, whatever their colour; each fully opaque colour is one object.

    An antialiased edge blends colour and alpha, so a half-opaque pixel takes the nearest of those colours.
    """
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if (alpha == 255).all():
        return _from_rgb(rgb, notes)
    opaque = _opaque(alpha, notes)
    solid = alpha == 255
    colours = np.unique(rgb[solid if solid.any() else opaque].reshape(-1, 3), axis=0)
    if len(colours) <= 1:  # the shape is drawn by transparency alone
        return opaque.astype(np.uint8), davis_palette()
    flat = np.where(solid[..., None], rgb, 0).astype(np.uint8)
    edge = opaque & ~solid
    if edge.any() and len(colours) <= 255:
        distances = np.abs(rgb[edge][:, None, :].astype(np.int32) - colours[None].astype(np.int32)).sum(axis=2)
        flat[edge] = colours[distances.argmin(axis=1)]
    elif edge.any():
        flat[edge] = rgb[edge]
    return _from_rgb(flat, notes)


def read_mask(path: Path) -> Mask:
    """Read a mask image: binary grey, palette-indexed (index = object id) or RGB colours.

    Transparent pixels (alpha below half, or a palette index marked transparent) are background.
    """
    path = Path(path)
    if path.is_dir():
        raise VosError(f"Mask {path} is a folder, not an image.")
    if not path.is_file():
        raise VosError(f"Mask {path} does not exist.")
    try:
        with Image.open(path) as image:
            image.load()
            notes: list[str] = []
            if image.mode == "P":
                ids, palette = _from_palette(image, notes)
            elif image.mode in ("L", "1", "I", "I;16", "I;16B", "F") and not image.has_transparency_data:
                ids = _from_grey(np.array(image.convert("I")).clip(0, 255), notes)
                palette = davis_palette()
            elif image.has_transparency_data:
                ids, palette = _from_rgba(np.array(image.convert("RGBA")), notes)
            else:
                ids, palette = _from_rgb(np.array(image.convert("RGB")), notes)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise VosError(f"Mask {path} is not a readable image.") from error
    mask = Mask(ids.astype(np.uint8), palette, notes)
    if not mask.object_ids:
        raise VosError(f"Mask {path} has no object pixels: mark at least one object.")
    return mask


def _same_aspect(mw: int, mh: int, width: int, height: int) -> bool:
    return abs(mw / mh - width / height) <= 0.01 * (width / height)


def fit_mask(mask: Mask, height: int, width: int, *, rotation: int = 0) -> Mask:
    """Resize (nearest) a mask of the frame's aspect ratio to the frame's size; else a clear error.

    ``height`` x ``width`` is the frame as displayed; ``rotation`` the container's display rotation
    (degrees), named in the error when the mask has the shape of the stored, unrotated frame.
    """
    mh, mw = mask.ids.shape
    if (mh, mw) == (height, width):
        return mask
    if not _same_aspect(mw, mh, width, height):
        if (rotation // 90) % 2 and _same_aspect(mw, mh, height, width):
            raise VosError(
                f"The mask is {mw}x{mh} but the video carries rotation metadata ({rotation % 360} degrees) and is "
                f"shown as {width}x{height}; draw the mask on the displayed (rotated) frame."
            )
        raise VosError(f"The mask is {mw}x{mh} but the video is {width}x{height}, a different shape.")
    ids = cv2.resize(mask.ids, (width, height), interpolation=cv2.INTER_NEAREST)
    notes = [*mask.notes, f"The mask is {mw}x{mh}; it was resized to the video's {width}x{height}."]
    resized = Mask(ids, mask.palette, notes)
    if not resized.object_ids:
        raise VosError("The mask has no object pixels left after resizing to the video's size.")
    return resized


def write_palette_png(path: Path, ids: np.ndarray, palette: np.ndarray) -> None:
    """(H, W) uint8 ids -> an indexed PNG whose pixel values are the ids.

    zlib's fastest level, as the masks are written on every frame: bear's mask (854x480) took
    1.4-1.6 ms at PIL's default level 6 and 0.6 ms at level 1, for 5.5 instead of 3.2 KB."""
    image = Image.fromarray(ids, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(path, format="PNG", compress_level=1)
