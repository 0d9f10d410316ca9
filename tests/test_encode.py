"""The video writer's frames: what the encoder is given for each pixel format."""

from __future__ import annotations

import av
import numpy as np
import pytest

from tests.conftest import DOG_SEQUENCE, davis_frames
from vosctl.encode import to_video_frame


def test_yuv420p_frames_match_ffmpegs_conversion(davis_root):
    # OpenCV converts for yuv420p encoders (the overlay), in place of FFmpeg's converter: the same
    # BT.601 limited range, so the luma may differ by rounding only; chroma is averaged over each
    # 2x2 block instead of sampled, so it differs by about one level on average (swapped planes or
    # channels: by tens).
    image = davis_frames(davis_root, DOG_SEQUENCE, count=1)[0]
    ours = to_video_frame(image, "yuv420p")
    assert ours.format.name == "yuv420p" and (ours.width, ours.height) == (854, 480)
    theirs = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    ours, theirs = ours.to_ndarray().astype(int), theirs.to_ndarray().astype(int)
    luma, chroma = slice(0, 480), slice(480, None)
    assert np.abs(ours[luma] - theirs[luma]).max() <= 1
    assert np.abs(ours[chroma] - theirs[chroma]).mean() < 1.0
    assert 16 <= ours[luma].min() and ours[luma].max() <= 235, "limited range, as FFmpeg's"


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "rgb24", "bgr0", "gbrp", "yuvj420p"])
def test_other_formats_are_given_rgb_for_the_encoder_to_convert(pix_fmt):
    image = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    frame = to_video_frame(image, pix_fmt)
    assert frame.format.name == "rgb24"
    assert np.array_equal(frame.to_ndarray(), image)
