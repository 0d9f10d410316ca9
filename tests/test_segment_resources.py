"""What a ``vosctl segment`` run costs: resident memory stays flat over a long video (segment_file
streams), and --profile reports the seconds per frame of each stage."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.session import SessionConfig
from vosctl.pipeline import segment_file

pytestmark = pytest.mark.slow


def resident_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_stays_flat_on_a_long_video(tmp_path, encode, tiny_model, one_torch_thread):
    # 640x480 frames (921 KB each) seen by the network at 256x192: a pipeline that kept every
    # decoded frame would grow by 460 MB over the measured 500 frames. What a streaming run does
    # grow by is the allocator settling (20-100 MB over the first 500 frames on 2-core machines,
    # flattening after ~1000; measured with malloc_trim too, so not free heap): with 256x192 frames
    # a frame leak (73 MB) was no longer far enough above that. A 2048-pixel online memory keeps
    # each frame's k-NN scores small; with 16384 pixels glibc's heap makes RSS swing by 100+ MB.
    height, width, count = 480, 640, 600
    background = np.full((height, width, 3), 90, dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = background.copy()
        x = int((width - 120) * (0.5 + 0.5 * np.sin(index / 25)))
        frame[180:300, x : x + 120] = (230, 40, 40)
        frames.append(frame)
    clip = encode(tmp_path / "long.mkv", frames)
    del frames
    mask = np.zeros((height, width), dtype=np.uint8)
    x0 = int((width - 120) * 0.5)
    mask[180:300, x0 : x0 + 120] = 255
    cv2.imwrite(str(tmp_path / "first.png"), mask)
    samples: dict[int, int] = {}

    def sample(done: int) -> None:
        if done in (100, count):
            samples[done] = resident_bytes()

    result = segment_file(
        video=clip,
        mask=tmp_path / "first.png",
        model=tiny_model,
        config=SessionConfig(memory_size=2048, max_size=256),
        device="cpu",
        overlay=False,
        masks_dir=tmp_path / "masks",
        on_frame=sample,
    )
    assert result.frames == count
    assert len(list((tmp_path / "masks").glob("*.png"))) == count
    growth = samples[count] - samples[100]
    assert growth < 150 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 500 frames"


def test_profile_prints_seconds_per_frame_of_each_stage(tmp_path, dog_small_clip, run_cli, tiny_model_file):
    clip, mask = dog_small_clip
    args = ["segment", clip, "--mask", mask, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"]
    quiet = run_cli([*args, "--no-overlay"])
    assert quiet.exit_code == 0, quiet.output
    assert "by stage" not in quiet.output
    result = run_cli([*args, "--no-overlay", "--overwrite", "--profile"])
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split()).split("Seconds per frame by stage (threads overlap):")[1]
    stages = dict(item.strip(" .").split(" ") for item in line.split(","))
    assert {"embed", "retrieve", "refine", "encode"} <= set(stages)
    assert all(float(v) >= 0 for v in stages.values())
