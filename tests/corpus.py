"""The bad-input corpus's raw material: tiny clips and masks cut from the shipped example, and the checks
every case makes (exit code, one sentence, nothing left behind, inputs unchanged)."""

from __future__ import annotations

import hashlib
import re
import struct
from fractions import Fraction
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


# ---- the corpus's inputs, built once from the example clip ----------------------------------------


def rotate_mp4(path: Path) -> Path:
    """Give an mp4's video track a 90-degree display matrix (what a phone held upright writes)."""
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40  # version/flags, times, track id, duration, layer, volume
    data[matrix : matrix + 36] = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


def cut_mp4(path: Path, frames: list[np.ndarray], encode, *, at_packet: bool) -> Path:
    """A faststart mp4 (index first) cut to about 60%: at a packet boundary, or mid-packet."""
    encode(path, frames, container_options={"movflags": "faststart"})
    with av.open(str(path)) as container:
        starts = sorted(p.pos for p in container.demux(video=0) if p.pos is not None and p.pos > 0)
    target = int(path.stat().st_size * 0.6)
    cut = min(starts, key=lambda pos: abs(pos - target))
    if not at_packet:
        cut = (cut + starts[starts.index(cut) + 1]) // 2
    with open(path, "r+b") as file:
        file.truncate(cut)
    return path


def encode_vfr(path: Path, frames: list[np.ndarray]) -> Path:
    """Frames at irregular times (0, 40, 50, 130, ... ms): a variable frame rate, as phones record."""
    times = np.cumsum([0, 40, 10, 80, 20, 60, 30, 50][: len(frames)])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, ms in zip(frames, times, strict=True):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = int(ms), Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for start in range(0, 44100 // 4, 1024):
            tone = (0.3 * np.sin(np.arange(start, start + 1024) / 10.0)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_folder(folder: Path, frames: list[np.ndarray], suffix: str = ".jpg") -> Path:
    folder.mkdir()
    for index, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"{index:05d}{suffix}"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def build_videos(folder: Path, encode) -> dict[str, Path]:
    """Every input video of the corpus, in ``folder``: name -> path."""
    frames = bear_frames(6)
    videos = {"clip": encode(folder / "clip.mp4", frames)}
    videos["one frame"] = encode(folder / "one.mp4", frames[:1])
    videos["odd size 853x479"] = encode(folder / "odd.mp4", bear_frames(3, (853, 479)), pix_fmt="yuv444p")
    videos["rotated 90"] = rotate_mp4(encode(folder / "rotated.mp4", frames[:3]))
    videos["variable frame rate"] = encode_vfr(folder / "vfr.mp4", frames)
    videos["10-bit yuv420p10le"] = encode(folder / "ten.mp4", frames[:3], pix_fmt="yuv420p10le")
    videos["grey"] = encode(folder / "grey.mp4", frames[:3], pix_fmt="gray")
    videos["mkv ffv1"] = encode(folder / "clip.mkv", frames[:3], codec="ffv1", pix_fmt="bgr0")
    videos["webm vp9"] = encode(folder / "clip.webm", frames[:3], codec="libvpx-vp9", options={"deadline": "realtime"})
    videos["avi mjpeg"] = encode(folder / "clip.avi", frames[:3], codec="mjpeg", pix_fmt="yuvj420p")
    videos["with audio"] = encode(folder / "talk.mp4", frames[:4], audio=True)
    many = [frames[i % 6] for i in range(30)]
    videos["cut at a packet boundary"] = cut_mp4(folder / "cut.mp4", many, encode, at_packet=True)
    videos["cut mid-packet"] = cut_mp4(folder / "cutmid.mp4", many, encode, at_packet=False)
    broken = bytearray(videos["clip"].read_bytes())
    middle = len(broken) // 2
    broken[middle : middle + 64] = bytes(range(64))
    (folder / "broken.mp4").write_bytes(bytes(broken))
    videos["broken bytes"] = folder / "broken.mp4"
    header = bytearray(videos["clip"].read_bytes())
    header[:64] = b"\xff" * 64
    (folder / "badheader.mp4").write_bytes(bytes(header))
    videos["broken header"] = folder / "badheader.mp4"
    (folder / "text.mp4").write_text("this is not a video\n")
    videos["text"] = folder / "text.mp4"
    (folder / "empty.mp4").write_bytes(b"")
    videos["zero bytes"] = folder / "empty.mp4"
    videos["audio only"] = encode_audio_only(folder / "audio.mp4")
    videos["frames jpg"] = frame_folder(folder / "frames", frames[:4])
    videos["frames png"] = frame_folder(folder / "framespng", frames[:3], ".png")
    mixed = frame_folder(folder / "mixed", frames[:3])
    cv2.imwrite(str(mixed / "00003.jpg"), cv2.resize(frames[3], (64, 36)))
    videos["frames of mixed sizes"] = mixed
    unreadable = frame_folder(folder / "unreadable", frames[:2])
    (unreadable / "00002.jpg").write_text("not a jpeg\n")
    videos["frames with an unreadable frame"] = unreadable
    with_notes = frame_folder(folder / "withnotes", frames[:3])
    (with_notes / "notes.txt").write_text("shot on Tuesday\n")
    videos["frames and a text file"] = with_notes
    (folder / "noframes").mkdir()
    (folder / "noframes" / "readme.txt").write_text("nothing here\n")
    videos["folder without frames"] = folder / "noframes"
    return videos
