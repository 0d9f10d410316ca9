"""``vosctl`` as a process (``vosctl.cli.run``): a run that succeeded exits at once, with its outputs
complete, its streams flushed and the exit handlers run; a failure exits the usual way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from .conftest import CLI_ENV

ROOT = Path(__file__).resolve().parents[1]


def vosctl(*args, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vosctl", *map(str, args)]
    # Buffered standard streams, as for a user (not PYTHONUNBUFFERED): the exit must flush them.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, **CLI_ENV, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_segment_process_exits_with_every_output_complete(tmp_path, bear_clip, tiny_model_file):
    done = vosctl(
        "segment", bear_clip["clip"], "--mask", bear_clip["mask"], "--model", tiny_model_file, "--threads", "1",
        "--masks-dir", tmp_path / "masks", "--mask-video", tmp_path / "masks.mkv", "-o", tmp_path / "out.mp4",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Segmented 6 frames" in done.stdout  # written through a pipe: flushed before the exit
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert [p.name for p in masks] == [f"{i:05d}.png" for i in range(6)]
    first = np.array(Image.open(masks[0]))
    assert first.shape == (72, 128) and first.any()
    for video in ("out.mp4", "masks.mkv"):
        with av.open(str(tmp_path / video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 6, video
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "masks.mkv", "out.mp4"]


def test_the_exit_handlers_still_run_and_what_they_print_is_flushed(tmp_path):
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, sys; "
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes')); "
        "atexit.register(lambda: sys.stdout.write('said at exit')); "
        "sys.argv = ['vosctl', '--help']; "
        "from vosctl.cli import run; run()"
    )
    done = vosctl(cwd=tmp_path, code=code)
    assert done.returncode == 0, done.stderr
    assert "segment" in done.stdout
    assert marker.read_text() == "yes"
    assert done.stdout.endswith("said at exit")


def test_a_failing_command_exits_with_its_error(tmp_path):
    done = vosctl("segment", tmp_path / "missing.mp4", "--mask", tmp_path / "missing.png", cwd=tmp_path)
    assert done.returncode not in (0, None)
    assert "missing" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
