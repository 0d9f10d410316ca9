"""Masks for any frames: ``--mask PATH`` (frame 0), ``--mask N=PATH`` (frame N), ``--masks-in DIR``.

Frame numbers are 0-based indices in decode order. Every mask format that ``read_mask`` takes is
taken here; the ids of colour masks stay consistent across files (a colour seen in an earlier mask
keeps its id), and the output palette is the first mask's with each later object's colour added.
Which frames are segmented in which direction is decided here too (:class:`Passes`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from engine.datasets import sparse_annotations
from engine.errors import VosError
from vosctl.masks import Mask, fit_mask, read_mask
from vosctl.palette import davis_palette

_FRAME_MASK = re.compile(r"(\d+)=(.+)")


class Direction(str, Enum):
    forward = "forward"
    backward = "backward"
    both = "both"


def parse_mask_option(value: str | Path) -> tuple[int, Path]:
    """``PATH`` -> (0, PATH); ``N=PATH`` -> (N, PATH). A file whose name itself looks like ``N=...`` wins."""
    text = str(value)
    match = _FRAME_MASK.fullmatch(text)
    if match is None or Path(text).exists():
        return 0, Path(text)
    return int(match.group(1)), Path(match.group(2))


def gather_annotations(masks: Sequence[str | Path] = (), masks_in: Path | None = None) -> dict[int, Path]:
    """{frame: mask file} from the ``--mask`` values and a ``--masks-in`` folder; two for one frame is an error."""
    found: dict[int, Path] = {}

    def add(frame: int, path: Path) -> None:
        if frame in found:
            raise VosError(f"Two masks for frame {frame}: {found[frame]} and {path}; give one mask per frame.")
        found[frame] = path

    for value in masks:
        add(*parse_mask_option(value))
    if masks_in is not None:
        for frame, path in sparse_annotations(Path(masks_in)).items():
            add(frame, path)
    if not found:
        raise VosError("No mask given: pass --mask PATH (frame 0), --mask N=PATH or --masks-in DIR.")
    return dict(sorted(found.items()))


@dataclass
class Annotations:
    """The masks of a run by frame index (sorted), one ``palette`` for writing ids back, notes to show."""

    masks: dict[int, Mask]
    files: dict[int, Path]
    palette: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> int:
        return next(iter(self.masks))

    @property
    def last(self) -> int:
        return next(reversed(self.masks))

    def ids(self, frames: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """{frame: (H, W) uint8 ids}, of ``frames`` only when given."""
        return {i: m.ids for i, m in self.masks.items() if frames is None or i in frames}

    def check_length(self, frame_count: int | None) -> None:
        """A mask for a frame the video does not have is an error (the count when known, else after decoding)."""
        if frame_count is not None and self.last >= frame_count:
            raise VosError(
                f"The mask {self.files[self.last]} is for frame {self.last}, but the video has {frame_count} "
                f"frames (0 to {frame_count - 1})."
            )

    def fitted(self, height: int, width: int, *, rotation: int = 0) -> Annotations:
        masks, notes = {}, []
        for frame, mask in self.masks.items():
            try:
                fitted = fit_mask(mask, height, width, rotation=rotation)
            except VosError as error:
                raise VosError(f"{str(error).rstrip('.')} (the mask of frame {frame}, {self.files[frame]}).") from None
            masks[frame] = fitted
            notes += [f"{note} (frame {frame})" if len(self.masks) > 1 else note for note in fitted.notes]
        return Annotations(masks, self.files, self.palette, notes)


def _code(colour: np.ndarray) -> int:
    return (int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2])


def read_annotations(files: Mapping[int, Path]) -> Annotations:
    """Read every mask; colour masks with colours of their own get ids consistent across the files."""
    davis = davis_palette()
    palette: np.ndarray | None = None  # the first mask's, with each later object's colour added
    colour_ids: dict[int, int] = {}  # colour -> id, for masks drawn in colours of their own
    used: set[int] = set()
    masks: dict[int, Mask] = {}
    for frame, path in sorted(files.items()):
        mask = read_mask(path)
        ids = mask.object_ids
        if any((mask.palette[i] != davis[i]).any() for i in ids):
            # read_mask numbers such colours 1, 2, ... in colour order: a colour keeps the id it got first.
            lut = np.arange(256, dtype=np.uint8)
            own = davis.copy()
            for object_id in ids:
                code = _code(mask.palette[object_id])
                if code not in colour_ids:
                    colour_ids[code] = min(set(range(1, 256)) - used - set(colour_ids.values()))
                lut[object_id] = colour_ids[code]
                own[colour_ids[code]] = mask.palette[object_id]
            mask = Mask(lut[mask.ids], own, mask.notes)
        if palette is None:
            palette = mask.palette.copy()
        for object_id in mask.object_ids:
            if object_id not in used:
                palette[object_id] = mask.palette[object_id]
                used.add(object_id)
        masks[frame] = mask
    notes = [note for mask in masks.values() for note in mask.notes]
    return Annotations(masks, dict(files), palette if palette is not None else davis, notes)


@dataclass(frozen=True)
class Passes:
    """Which frames are segmented how: ``forward_from`` (None: no forward pass) to the end, and
    ``backward_from`` (None: no backward pass) down to frame 0, with the masks each pass is given.
    Frames no pass reaches are written as background."""

    forward_from: int | None
    backward_from: int | None
    forward_masks: tuple[int, ...]
    backward_masks: tuple[int, ...]


def plan_passes(frames: Sequence[int], direction: Direction | str | None) -> Passes:
    """``frames``: the annotated frame indices, sorted. Default: both when the first mask is not on frame 0.

    forward: from the earliest mask to the end, every mask used. backward: from the latest mask down
    to frame 0, every mask used. both: forward from the earliest mask, and backward from it to frame
    0 (the later masks are for objects and corrections after it, so they take no part before it).
    """
    first, last = frames[0], frames[-1]
    direction = Direction(direction) if direction is not None else Direction.both
    if direction is Direction.forward:
        return Passes(first, None, tuple(frames), ())
    if direction is Direction.backward:
        return Passes(None, last, (), tuple(frames))
    return Passes(first, first if first > 0 else None, tuple(frames), (first,) if first > 0 else ())
