"""Training on frames as H.264 leaves them (trainer.codec, ``vosctl train --codec-crf``)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from engine.errors import VosError
from tests.test_trainer import make_davis, tiny_settings
from trainer.codec import STAMP, through_codec, transcode
from trainer.data import load_sequence
from trainer.train import run_training


def moving_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """A smooth gradient with a bright square moving across it."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        frame = np.stack([xs * 2, ys * 3, (xs + ys) // 2], axis=-1).clip(0, 255).astype(np.uint8)
        frame[10:26, 4 + 3 * t : 20 + 3 * t] = (250, 240, 30)
        frames.append(frame)
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("size", [(48, 64), (47, 63)])  # odd sides are padded for 4:2:0 and cropped back
def test_transcode_gives_every_frame_back_close_but_changed(size):
    frames = moving_frames(6, *size)
    out = transcode(frames, crf=23)
    assert len(out) == 6 and all(f.shape == (*size, 3) and f.dtype == np.uint8 for f in out)
    assert all(30 < psnr(a, b) < 60 for a, b in zip(frames, out, strict=True))  # the codec's loss, not noise
    assert psnr(frames[0], transcode(frames, crf=45)[0]) < psnr(frames[0], out[0])  # a higher CRF loses more


def test_transcode_refuses_frames_of_two_sizes():
    with pytest.raises(VosError, match="one size"):
        transcode([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 48, 3), np.uint8)], crf=23)


def test_through_codec_keeps_a_copy_and_renews_it_when_its_source_changes(tmp_path):
    root = make_davis(tmp_path / "davis", names=("a",))
    seq = load_sequence(root, "a")
    folder = tmp_path / "codec" / "a"
    coded = through_codec(seq, 23, folder)
    assert coded.masks == seq.masks and coded.numbers == seq.numbers
    assert [p.parent for p in coded.frames] == [folder] * len(seq.frames) and (folder / STAMP).is_file()
    original = np.array(Image.open(seq.frames[1]))
    copy = np.array(Image.open(coded.frames[1]))
    assert copy.shape == original.shape and not np.array_equal(copy, original)
    # The same source and CRF: read back, not transcoded again.
    times = [p.stat().st_mtime_ns for p in coded.frames]
    assert [p.stat().st_mtime_ns for p in through_codec(seq, 23, folder).frames] == times
    # Another CRF, or a source frame rewritten: transcoded again.
    stamp = (folder / STAMP).read_text()
    through_codec(seq, 40, folder)
    assert (folder / STAMP).read_text() != stamp
    Image.fromarray(255 - original).save(seq.frames[1])
    os.utime(seq.frames[1], ns=(0, 10**18))
    renewed = np.array(Image.open(through_codec(seq, 23, folder).frames[1]))
    assert not np.array_equal(renewed, copy)


def test_through_codec_names_a_frame_it_cannot_read(tmp_path):
    root = make_davis(tmp_path / "davis", names=("a",))
    seq = load_sequence(root, "a")
    seq.frames[2].write_bytes(b"not a jpeg")
    with pytest.raises(VosError, match="00002.jpg is not a readable image"):
        through_codec(seq, 23, tmp_path / "codec")


def test_training_with_codec_crf_keeps_the_coded_frames_with_the_cache(tmp_path):
    root = make_davis(tmp_path / "davis")
    settings = tiny_settings(root, tmp_path / "run", steps=2)
    settings = replace(
        settings, data=replace(settings.data, codec_crf=23, cache_features=True, cache_dir=tmp_path / "cache")
    )
    run_training(settings=settings)
    coded = tmp_path / "cache" / "codec-crf23"
    assert sorted(p.name for p in coded.iterdir()) == ["a", "b"]  # the training sequences ("c" validates)
    assert len(list((coded / "a").glob("*.jpg"))) == 4 and (tmp_path / "run" / "model.pt").is_file()


def test_codec_crf_out_of_range_is_refused(tmp_path):
    settings = tiny_settings(tmp_path, tmp_path / "run")
    with pytest.raises(VosError, match="codec-crf"):
        replace(settings.data, codec_crf=52)
