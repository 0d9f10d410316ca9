"""Training frames as a video codec leaves them.

The videos vosctl segments are compressed (H.264 in nearly every mp4), while DAVIS's training frames
are high-quality JPEGs. On the cross-validation, frames that went through libx264 at CRF 23 (ffmpeg's
default) cost the JPEG-trained models 1.2-1.3 points of J&F, 22-23 of the 30 sequences worse (README,
eighteenth round). :func:`through_codec` gives a sequence whose frames went through the codec, so
the head and the refiner learn from what they will see.

Each sequence is encoded as one H.264 stream (libx264, 4:2:0, ``crf``, 24 fps, x264's default
preset, so P and B frames are predicted as in a real file), decoded, and its frames are written as
JPEGs of quality 100 without chroma subsampling (their error is far below the codec's). The copy is
kept in ``folder`` beside a stamp of the frames it came from, and reused while they do not change;
it is not made the same twice (libx264 through PyAV gave frames differing between runs, with its
own threads and, less often, with one), so training on it repeats exactly only with the copy kept.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np

from engine.errors import VosError
from engine.files import write_atomic
from trainer.data import Sequence, _read_rgb, file_stamp, load_sequence

RATE = 24
STAMP = "source.json"
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def transcode(frames: list[np.ndarray], crf: int) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of one size -> the same frames encoded as one H.264 stream and decoded.

    An odd side is padded by repeating the last row or column (4:2:0 needs even sides) and cropped
    back after decoding."""
    if not frames:
        return []
    height, width = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames):
        raise VosError("The frames of a sequence must all have one size to go through the codec.")
    pad_h, pad_w = height % 2, width % 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            padded = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frame
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer, "r") as container:
        decoded = [f.to_ndarray(format="rgb24")[:height, :width] for f in container.decode(video=0)]
    if len(decoded) != len(frames):
        raise VosError(f"The codec gave back {len(decoded)} frames of {len(frames)}.")
    return decoded


def _stamp(seq: Sequence, crf: int) -> dict:
    return {"crf": crf, "frames": [file_stamp(p) for p in seq.frames]}


def through_codec(seq: Sequence, crf: int, folder: Path) -> Sequence:
    """``seq`` with its frames replaced by their H.264 (``crf``) versions, kept in ``folder`` (made
    here, and reused while the source frames and ``crf`` stay the same); the masks are the same files."""
    folder = Path(folder)
    stamp = _stamp(seq, crf)
    copies = tuple(folder / f"{p.stem}.jpg" for p in seq.frames)
    stamp_file = folder / STAMP
    if stamp_file.is_file() and all(p.is_file() for p in copies):
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return replace(seq, frames=copies)
        except json.JSONDecodeError:
            pass  # a stamp cut short: transcoded again
    folder.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)  # no stamp while the copies are being rewritten
    for path, frame in zip(copies, transcode([_read_rgb(p) for p in seq.frames], crf), strict=True):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), _JPEG)
        if not ok:
            raise VosError(f"Could not encode {path}.")
        write_atomic(path, lambda tmp, data=data: tmp.write_bytes(data.tobytes()))
    text = json.dumps(stamp)
    write_atomic(stamp_file, lambda tmp: tmp.write_text(text))
    return replace(seq, frames=copies)


def codec_copy(root: Path, names: list[str], crf: int, out: Path) -> None:
    """A copy of the DAVIS-layout ``root`` whose sequences ``names`` went through H.264 at ``crf``
    (:func:`through_codec`), for scoring or training on frames as an mp4 holds them; its
    Annotations and ImageSets are links to ``root``'s."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("Annotations", "ImageSets"):
        if not (out / name).exists():
            (out / name).symlink_to((Path(root) / name).resolve(), target_is_directory=True)
    for name in names:
        through_codec(load_sequence(root, name), crf, out / "JPEGImages" / "480p" / name)
