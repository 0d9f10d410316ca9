"""Shared fixtures: DAVIS data, video encoding with PyAV, the CLI runner and cached models."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine.factory import build_model, save_model_file
from engine.model import EmbeddingModel, ModelConfig, create_model

# The DAVIS 2016 train split (JPEGImages/480p/<seq>, Annotations/480p/<seq>); tests skip without it.
DEFAULT_DAVIS = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016-train")
# A fixed console for output assertions: rich reads COLUMNS when it measures, TERM=dumb drops colours.
CLI_ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}
# The sequence the segment tests run on (25 frames, 854x480), and the (w, h) of the downscaled clips
# their tiny-model runs use; 16:9 like DAVIS 480p.
DOG_SEQUENCE = "dog-agility"
DOG_SMALL = (256, 144)


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """Exported graphs go to a temporary folder, not the user's cache (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("vosctl-cache")
    os.environ["VOSCTL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def davis_root() -> Path:
    root = Path(os.environ.get("VOSCTL_DAVIS2016", DEFAULT_DAVIS))
    if not (root / "JPEGImages" / "480p").is_dir() or not (root / "Annotations" / "480p").is_dir():
        pytest.skip(f"DAVIS 2016 is not at {root} (set VOSCTL_DAVIS2016)")
    return root


def davis_frames(root: Path, sequence: str, count: int | None = None, size: tuple[int, int] | None = None):
    """The first ``count`` frames of a DAVIS sequence as (H, W, 3) uint8 RGB, resized to ``size`` (w, h)."""
    files = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:count]
    frames = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    if size is not None:
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
    return frames


def davis_masks(root: Path, sequence: str, count: int | None = None) -> list[np.ndarray]:
    """Ground-truth (H, W) bool masks of a DAVIS 2016 sequence (stored as 0/255 PNGs)."""
    files = sorted((root / "Annotations" / "480p" / sequence).glob("*.png"))[:count]
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) > 0 for f in files]


@pytest.fixture(scope="module")
def dog_small_frames(davis_root) -> list[np.ndarray]:
    """dog-agility's frames at ``DOG_SMALL``."""
    return davis_frames(davis_root, DOG_SEQUENCE, size=DOG_SMALL)


@pytest.fixture(scope="module")
def dog_small_mask(davis_root) -> np.ndarray:
    """The first dog-agility mask at the small size, as a 0/255 PNG's pixels."""
    full = cv2.imread(str(davis_root / "Annotations" / "480p" / DOG_SEQUENCE / "00000.png"), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(full, DOG_SMALL, interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def dog_small_clip(tmp_path, dog_small_frames, dog_small_mask, encode) -> tuple[Path, Path]:
    """(tmp_path/clip.mp4, tmp_path/first.png): the small dog-agility clip and its first mask."""
    clip = encode(tmp_path / "clip.mp4", dog_small_frames)
    mask = tmp_path / "first.png"
    cv2.imwrite(str(mask), dog_small_mask)
    return clip, mask


def encode_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    fps: int | Fraction = 24,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    audio: bool = False,
) -> Path:
    """Encode (H, W, 3) uint8 RGB frames with PyAV; ``audio`` adds a 440 Hz sine tone in AAC."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options is None and codec == "libx264":
            options = {"preset": "veryfast", "crf": "18"}
        stream.options = options or {}
        audio_stream = None
        if audio:
            audio_stream = container.add_stream("aac", rate=44100)
            audio_stream.layout = "mono"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            rate, chunk = 44100, 1024
            total = int(rate * len(frames) / float(fps))
            for start in range(0, total, chunk):
                t = np.arange(start, min(start + chunk, total)) / rate
                tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, start
                for packet in audio_stream.encode(frame):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path


@pytest.fixture(scope="session")
def encode() -> Callable[..., Path]:
    """:func:`encode_video` as a fixture."""
    return encode_video


@pytest.fixture(scope="session")
def run_cli() -> Callable:
    """``run_cli(args)`` -> click Result of ``vosctl ARGS``, with a fixed-width console."""
    from vosctl.cli import app

    runner = CliRunner()

    def run(args: Sequence[str | Path]):
        return runner.invoke(app, [str(a) for a in args], env=CLI_ENV, catch_exceptions=False)

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the heavy CPU runs: on a small shared machine, torch's spinning worker
    threads compete with every other process and a run can slow down tenfold. Results do not change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def imagenet_model() -> EmbeddingModel:
    """The untrained ImageNet EfficientNet-Lite0 features, built once."""
    return build_model("imagenet")


@pytest.fixture(scope="session")
def tiny_model() -> EmbeddingModel:
    return create_model(ModelConfig(backbone="tiny", head="features"), pretrained=False).eval()


@pytest.fixture(scope="session")
def tiny_model_file(tiny_model, tmp_path_factory) -> Path:
    """The tiny model as a model file, for fast CLI runs with ``--model``."""
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model_file(tiny_model, path)
    return path


@pytest.fixture(scope="session")
def bear_clip(tmp_path_factory) -> dict[str, Path]:
    """A 6-frame 128x72 cut of examples/bear.mp4 and its 0/255 first-frame mask, built once; copy before use."""
    from .corpus import bear_frames, bear_mask

    folder = tmp_path_factory.mktemp("bear")
    clip = encode_video(folder / "clip.mp4", bear_frames(6))
    mask = folder / "mask.png"
    cv2.imwrite(str(mask), bear_mask())
    return {"clip": clip, "mask": mask}
