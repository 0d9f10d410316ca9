"""Video out: overlay and mask videos with the input's frame rate and timestamps, audio carried over.

The writer fills whatever path it is given; :class:`vosctl.outputs.AtomicOutputs` gives it a
temporary name and renames the file into place only when complete.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from engine.errors import VosError

# Container (from the file extension) -> (lossy codec for the overlay, lossless codec for masks).
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "libx264rgb"),
    ".mov": ("mov", "libx264", "libx264rgb"),
    ".m4v": ("mp4", "libx264", "libx264rgb"),
    ".mkv": ("matroska", "libx264", "ffv1"),
    ".webm": ("webm", "libvpx-vp9", "libvpx-vp9"),
    ".avi": ("avi", "mjpeg", "ffv1"),
}
# Audio codecs a container takes as they are; others are re-encoded to the fallback.
AUDIO_FALLBACK = {"mp4": "aac", "mov": "aac", "matroska": None, "webm": "libopus", "avi": "mp3"}
AUDIO_REMUX = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"},
    "webm": {"opus", "vorbis"},
    "avi": {"mp3", "ac3", "pcm_s16le", "pcm_u8"},
}


# x264's speed preset for overlay videos, encoded on one thread: the CLI's refinement thread encodes
# beside the compute threads, which already take the cores (x264's own threads would go past
# ``--threads``). CPU a frame at 854x480, one thread (dance-jump's overlay, crf 20): veryfast 7-8 ms,
# superfast 4.3-4.9 ms at 1.15x the file size, ultrafast 2.7 ms at 2.5x. Over the 30 training
# sequences superfast on one thread printed 4% more fps than veryfast on x264's own threads.
OVERLAY_PRESET = "superfast"
OVERLAY_THREADS = "1"


def container_for(path: Path) -> tuple[str, str, str]:
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        raise VosError(f"Cannot write {path}: use one of {', '.join(sorted(CONTAINERS))}.")
    return CONTAINERS[suffix]


def to_video_frame(image: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """(H, W, 3) uint8 RGB -> a frame for an encoder of ``pix_fmt``. For yuv420p (the overlay's
    H.264 and VP9) OpenCV converts: FFmpeg's converter, which the encoder would otherwise call, took
    1.7 ms of CPU a frame at 854x480 against 0.45 ms (one core). Both give BT.601 limited range, the
    luma within 1; OpenCV averages each 2x2 block's chroma where FFmpeg samples it."""
    if pix_fmt == "yuv420p":
        return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(image, format="rgb24")


class VideoWriter:
    """Encodes RGB frames at given timestamps; copies (or re-encodes) audio packets as they come."""

    def __init__(
        self,
        path: Path,
        *,
        final_path: Path,
        width: int,
        height: int,
        fps: Fraction,
        time_base: Fraction | None,
        lossless: bool = False,
        audio_stream=None,
        preset: str | None = None,
    ) -> None:
        fmt, lossy, exact = container_for(final_path)
        codec = exact if lossless else lossy
        self.container = av.open(str(path), "w", format=fmt)
        self.fps = fps
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        self.time_base = time_base or Fraction(1, 1) / fps
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        if codec in ("libx264rgb",):
            self.stream.pix_fmt, self.stream.options = "rgb24", {"qp": "0", "preset": "veryfast"}
        elif codec == "ffv1":
            self.stream.pix_fmt = "bgr0"
        elif codec == "libvpx-vp9":
            self.stream.pix_fmt = "yuv420p" if not lossless else "gbrp"
            self.stream.options = (
                {"lossless": "1"}
                if lossless
                else {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
            )
        elif codec == "mjpeg":
            self.stream.pix_fmt, self.stream.options = "yuvj420p", {"q:v": "3"}
        else:  # yuv420p needs even sides; odd frames keep every pixel in 4:4:4
            even = width % 2 == 0 and height % 2 == 0
            self.stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self.stream.options = {"crf": "20", "preset": preset or OVERLAY_PRESET, "threads": OVERLAY_THREADS}
        self.audio_in = audio_stream
        self.audio_out = None
        self._audio_decoder = None
        if audio_stream is not None:
            self._open_audio(fmt, audio_stream)
        self._index = 0

    def _open_audio(self, fmt: str, audio_stream) -> None:
        name = audio_stream.codec_context.name
        remux = AUDIO_REMUX.get(fmt)
        if remux is None or name in remux:
            self.audio_out = self.container.add_stream_from_template(audio_stream)
            return
        fallback = AUDIO_FALLBACK[fmt]
        self.audio_out = self.container.add_stream(fallback, rate=audio_stream.codec_context.sample_rate)
        self._audio_decoder = audio_stream.codec_context

    def write(self, image: np.ndarray, pts: int | None) -> None:
        """image (H, W, 3) uint8 RGB; ``pts`` in the input's time base (None: by frame index)."""
        frame = to_video_frame(image, self.stream.pix_fmt)
        frame.pts = pts if pts is not None else round(self._index / self.fps / self.time_base)
        frame.time_base = self.time_base
        self._index += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def write_audio(self, packet: av.Packet) -> None:
        if self.audio_out is None:
            return
        if self._audio_decoder is None:
            packet.stream = self.audio_out
            self.container.mux(packet)
            return
        for frame in self._audio_decoder.decode(packet):
            frame.pts = None
            for out in self.audio_out.encode(frame):
                self.container.mux(out)

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self._audio_decoder is not None:
            for packet in self.audio_out.encode():
                self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # the file is discarded anyway
            pass
