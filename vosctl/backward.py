"""The backward pass: frames before an annotated frame, segmented from it in reverse, in flat memory.

A video cannot be decoded backwards cheaply, so the frames before the pass's start are kept, as
they are decoded, in a :class:`FrameStore`: lossless PNGs in a private temporary folder (the
system's, never beside the user's files), removed when the run ends however it ends. The pass
reads them back one at a time in reverse, and writes each frame's ids back to the store, so
memory holds O(1) frames whatever the video's length; disk holds the frames before the start.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engine.between import InOrder
from engine.errors import VosError
from engine.session import VideoSession
from vosctl.video import Frame


class FrameStore:
    """Frames (and later their ids) by index, on disk; only their timestamps stay in memory."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="vosctl-frames-"))
        self._times: dict[int, tuple[int | None, Fraction | None, int]] = {}

    def __len__(self) -> int:
        return len(self._times)

    def _write(self, path: Path, image: np.ndarray) -> None:
        # PNG level 1: lossless and a few ms a frame; a full disk is the user's to know about.
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise VosError(f"Cannot write a temporary frame to {self.folder} (is the disk full?).")

    def put(self, frame: Frame) -> None:
        self._write(self.folder / f"{frame.index}.png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        self._times[frame.index] = (frame.pts, frame.time_base, frame.rotation)

    def frame(self, index: int) -> Frame:
        image = cv2.imread(str(self.folder / f"{index}.png"), cv2.IMREAD_COLOR)
        if image is None:
            raise VosError(f"A temporary frame in {self.folder} went missing during the run.")
        pts, time_base, rotation = self._times[index]
        return Frame(index, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), pts, time_base, rotation)

    def put_ids(self, index: int, ids: np.ndarray) -> None:
        self._write(self.folder / f"{index}.ids.png", ids)

    def ids(self, index: int) -> np.ndarray:
        ids = cv2.imread(str(self.folder / f"{index}.ids.png"), cv2.IMREAD_UNCHANGED)
        if ids is None:
            raise VosError(f"A temporary mask in {self.folder} went missing during the run.")
        return ids

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_backward(
    session: VideoSession, store: FrameStore, start: Frame, masks: Mapping[int, np.ndarray], *, batch: int = 1
) -> np.ndarray:
    """Segment ``start`` (annotated) and then every stored frame before it, in reverse, with a new
    ``session``; each stored frame's ids go back to the store. ``masks`` (frame -> ids) holds the
    start's mask and any earlier ones the pass is to use. Returns the start frame's ids."""
    if start.index not in masks:
        raise ValueError("the backward pass starts on an annotated frame")
    order = list(range(start.index, -1, -1))
    start_ids = None
    in_order = InOrder(session)  # a carried frame waits for the next key frame (engine.between)

    def refine(ready) -> None:
        nonlocal start_ids
        for frame, p in ready:
            ids = session.output(frame.image, p, frame.index in masks)
            if frame.index == start.index:
                start_ids = ids
            else:
                store.put_ids(frame.index, ids)

    for offset in range(0, len(order), batch):
        chunk = order[offset : offset + batch]
        frames = [start if i == start.index else store.frame(i) for i in chunk]
        probs = session.step_batch([f.image for f in frames], [masks.get(i) for i in chunk], refine=False, later=True)
        for frame, p in zip(frames, probs, strict=True):
            in_order.add((frame, p), p)
        refine(in_order.ready())
    refine(in_order.finish())
    return start_ids
