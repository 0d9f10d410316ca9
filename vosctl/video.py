"""Video in: PyAV decoding (or a folder of frames), streamed one frame at a time.

Memory does not grow with the video's length: frames are decoded, handed on and dropped. The
container's rotation metadata is applied, so frames come out the way a player shows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from engine.datasets import FRAME_SUFFIXES
from engine.errors import VosError

IMAGE_SUFFIXES = FRAME_SUFFIXES  # one list of frame suffixes, shared with the dataset reader


@dataclass
class Frame:
    """One decoded frame: ``image`` (H, W, 3) uint8 RGB, its ``pts`` in ``time_base`` units.

    ``rotation`` is the container's display rotation (degrees), already applied to ``image``.
    """

    index: int
    image: np.ndarray
    pts: int | None
    time_base: Fraction | None
    rotation: int = 0


@dataclass
class AudioPacket:
    """An undecoded audio packet, passed through to the output unchanged."""

    packet: av.Packet


def _rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` (a multiple of 90), as the display matrix asks."""
    turns = (degrees // 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class VideoSource:
    """A video file opened with PyAV. Use as a context manager; iterate with :meth:`items`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VosError(f"Input {self.path} does not exist.")
        if not self.path.is_file():
            raise VosError(f"Input {self.path} is not a file.")
        try:
            self.container = av.open(str(self.path), "r")
        except PermissionError as error:
            raise VosError(f"Input {self.path} cannot be read (permission denied).") from error
        except (av.FFmpegError, OSError, ValueError) as error:
            raise VosError(f"Input {self.path} is not a readable video.") from error
        if not self.container.streams.video:
            self.container.close()
            raise VosError(f"Input {self.path} has no video stream.")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        self.frame_count: int | None = self.stream.frames or None
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps: Fraction = Fraction(rate) if rate else Fraction(25)
        self.time_base: Fraction | None = self.stream.time_base
        self.width = self.stream.codec_context.width
        self.height = self.stream.codec_context.height

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def items(self) -> Iterator[Frame | AudioPacket]:
        """Frames (decoded, rotated, RGB) and audio packets (untouched), in container order."""
        streams = [self.stream] + ([self.audio] if self.audio is not None else [])
        index = 0
        try:
            for packet in self.container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None:
                        yield AudioPacket(packet)
                    continue
                for frame in packet.decode():
                    rotation = int(getattr(frame, "rotation", 0) or 0)
                    image = _rotate(frame.to_ndarray(format="rgb24"), rotation)
                    yield Frame(index, image, frame.pts, frame.time_base, rotation)
                    index += 1
        except av.FFmpegError as error:
            raise VosError(f"The video {self.path} is damaged: decoding stopped after frame {index}.") from error
        if index == 0:
            raise VosError(f"The video {self.path} has no frames.")
        if self.frame_count is not None and index < self.frame_count:
            # A file cut at a packet boundary demuxes to a clean end: only the count tells.
            raise VosError(
                f"The video {self.path} ended after {index} of {self.frame_count} frames; it is damaged or truncated."
            )


class FrameFolderSource:
    """A folder of JPEG/PNG frames (DAVIS layout: 00000.jpg, 00001.jpg, ...), in name order."""

    def __init__(self, path: Path, fps: float = 24.0) -> None:
        self.path = Path(path)
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise VosError(f"The folder {self.path} holds no JPEG or PNG frames.")
        self.frame_count: int | None = len(self.files)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.fps
        self.audio = None
        first = cv2.imread(str(self.files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise VosError(f"The frame {self.files[0]} is not a readable image.")
        self.height, self.width = first.shape[:2]

    def __enter__(self) -> FrameFolderSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def items(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                raise VosError(f"The frame {file} is not a readable image.")
            if image.shape[:2] != (self.height, self.width):
                raise VosError(f"The frame {file} has a different size from the first frame.")
            yield Frame(index, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), index, self.time_base)


def open_source(path: Path, *, fps: float = 24.0) -> VideoSource | FrameFolderSource:
    """A video file, or a folder of frames."""
    path = Path(path)
    if path.is_dir():
        return FrameFolderSource(path, fps=fps)
    return VideoSource(path)
