"""Ctrl-C and kill -9 in the middle of a real ``vosctl segment`` process, then a second run to completion."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CLI_ENV, encode_video
from .corpus import bear_frames, digests

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """240 frames (the bear's first 40, six times over): long enough to be stopped halfway."""
    folder = tmp_path_factory.mktemp("long")
    return encode_video(folder / "long.mp4", bear_frames(40) * 6)


def start(folder: Path, clip: Path, mask: Path, model: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "vosctl", "segment", clip, "--mask", mask, "--model", model, "--threads", "1"]
    args += ["--masks-dir", folder / "masks", "--mask-video", folder / "masks.mkv", "-o", folder / "out.mp4"]
    env = {**os.environ, **CLI_ENV, "PYTHONPATH": str(ROOT)}
    # As from a terminal: a test runner started in the background (``cmd &`` in a script) ignores
    # SIGINT, and a child inherits that; Ctrl-C must reach vosctl as it would a user's command.
    return subprocess.Popen(
        [str(a) for a in args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_frames(process: subprocess.Popen, folder: Path, count: int = 3, timeout: float = 60.0) -> None:
    """Until the masks' temporary folder holds ``count`` frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()
        if any(len(list(tmp.glob("*.png"))) >= count for tmp in folder.glob(".masks.*.part")):
            return
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no frames written in time")


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def inputs(tmp_path, long_clip, bear_clip):
    clip, mask = tmp_path / "long.mp4", tmp_path / "mask.png"
    shutil.copy(long_clip, clip)
    shutil.copy(bear_clip["mask"], mask)
    return clip, mask


def test_sigint_mid_run_exits_130_and_leaves_nothing(tmp_path, inputs, tiny_model_file):
    clip, mask = inputs
    hashes = digests(tmp_path)
    process = start(tmp_path, clip, mask, tiny_model_file)
    wait_for_frames(process, tmp_path)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, output
    assert "Interrupted" in output and "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "mask.png"]
    assert digests(tmp_path) == hashes


def test_after_kill_9_the_next_run_removes_the_temporary_files(tmp_path, inputs, tiny_model_file):
    clip, mask = inputs
    hashes = digests(tmp_path)
    process = start(tmp_path, clip, mask, tiny_model_file)
    wait_for_frames(process, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    left = hidden(tmp_path)
    assert len(left) == 3, f"the killed run's temporary files: {left}"  # overlay, mask video, masks folder
    unrelated = tmp_path / ".masks.keep.part"  # the user's, not of vosctl's naming: never removed
    unrelated.mkdir()
    process = start(tmp_path, clip, mask, tiny_model_file)
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output
    assert hidden(tmp_path) == [unrelated.name], "no temporary file of either run remains"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "long.mp4",
        "mask.png",
        "masks",
        "masks.mkv",
        "out.mp4",
    ]
    assert {name: digests(tmp_path)[name] for name in hashes} == hashes
