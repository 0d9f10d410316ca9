"""The bad-input corpus's raw material: tiny clips and masks cut from the shipped example, and the checks
every case makes (exit code, one sentence, nothing left behind, inputs unchanged)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import av
import cv2
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIZE = (128, 72)  # (w, h): the bear clip (854x480) scaled down, 16:9 and even for yuv420p
FAST = ["--max-size", "128", "--threads", "1", "--refine", "none"]


def bear_frames(count: int = 6, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """The first ``count`` frames of examples/bear.mp4 as (H, W, 3) uint8 RGB, resized to ``size`` (w, h)."""
    frames = []
    with av.open(str(EXAMPLES / "bear.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return frames


def bear_mask(size: tuple[int, int] = SIZE) -> np.ndarray:
    """(H, W) uint8 0/255: the shipped first-frame mask at ``size`` (w, h)."""
    full = cv2.imread(str(EXAMPLES / "bear.png"), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(full, size, interpolation=cv2.INTER_NEAREST)


def listing(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder``, hidden ones included, with its size (folders -1)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_clean_failure(result, *, contains: str | None = None, code: int = 1, bar: bool = False) -> str:
    """Exit code ``code``, one sentence after ``Error:``, no traceback; no progress bar unless ``bar`` (a
    failure after the first frame); returns the sentence."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.count("Error:") == 1, result.output
    if not bar:
        assert "fps" not in text.split("Error:", 1)[0], f"a progress bar before the error: {result.output}"
    message = text.split("Error:", 1)[1].strip()
    assert message.endswith("."), message
    assert not re.search(r"\.\s+[A-Z]", message[:-1]), f"more than one sentence: {message}"
    assert "unexpected" not in message, f"a bug, not a reported error: {message}"
    if contains is not None:
        assert contains in message, message
    return message
