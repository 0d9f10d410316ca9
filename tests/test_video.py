"""Video decoding: common containers and codecs, rotation metadata, streaming order."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from vosctl.video import Frame, VideoSource, open_source


def _frames(n: int = 5, height: int = 32, width: int = 64) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :8] = 255  # a white stripe on the left edge
        image[..., 1] = 40 * i  # frames differ, so their order is visible
        frames.append(image)
    return frames


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("clip.mp4", "libx264", "yuv420p"),
        ("clip.mkv", "libx264", "yuv420p"),
        ("clip.webm", "libvpx-vp9", "yuv420p"),
        ("clip.mov", "libx264", "yuv420p"),
        ("clip.avi", "mjpeg", "yuvj420p"),
    ],
)
def test_common_containers_decode_in_order(encode, tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    frames = _frames()
    path = encode(tmp_path / name, frames, codec=codec, pix_fmt=pix_fmt, options={})
    with open_source(path) as source:
        decoded = [item for item in source.items() if isinstance(item, Frame)]
    assert [f.index for f in decoded] == list(range(len(frames)))
    for got, want in zip(decoded, frames, strict=True):
        assert got.image.shape == want.shape and got.image.dtype == np.uint8
        assert abs(float(got.image[..., 1].mean()) - float(want[..., 1].mean())) < 12


def test_rotation_metadata_is_applied(encode, tmp_path: Path) -> None:
    """A phone-style mp4 whose track matrix says 'rotate 90 degrees clockwise' comes out upright."""
    path = encode(tmp_path / "flat.mp4", _frames(3))
    data = bytearray(path.read_bytes())
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    clockwise = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    at = data.find(identity, data.find(b"tkhd"))
    assert at > 0
    data[at : at + 36] = clockwise
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(data)
    with VideoSource(rotated) as source:
        image = next(item for item in source.items() if isinstance(item, Frame)).image
    assert image.shape == (64, 32, 3)
    # The stripe on the left edge is on the top edge after a clockwise quarter turn.
    assert image[:6, :, 0].mean() > 200 and image[-20:, :, 0].mean() < 30
