"""``vosctl segment`` failing: every kind of bad input exits 1 with one sentence and writes nothing, and
Ctrl-C (in segment_file and in the CLI) leaves no output and the input untouched."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from engine.session import SessionConfig
from vosctl.pipeline import segment_file

from . import corpus

pytestmark = pytest.mark.slow

# Every corpus.assert_clean_failure here passes bar=True: some of these cases fail after the first
# frame, so a progress bar may stand above the error.


# ---- bad input: exit 1, one sentence, nothing written -------------------------------------------


def make_bad_case(case: str, folder: Path, encode) -> tuple[list, str | None]:
    """Inputs for ``case`` in ``folder`` -> (extra CLI arguments, expected part of the message)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(30)]
    good_mask = np.zeros((96, 128), dtype=np.uint8)
    good_mask[32:64, 40:80] = 255
    cv2.imwrite(str(folder / "first.png"), good_mask)
    clip = folder / "clip.mp4"
    mask = folder / "first.png"
    if case != "missing input" and not case.startswith("video"):
        encode(clip, frames[:5])
    if case == "missing input":
        return [folder / "absent.mp4", "--mask", mask], "does not exist"
    if case == "video is text":
        clip.write_text("this is not a video\n")
        return [clip, "--mask", mask], "not a readable video"
    if case == "video mp4 without frames":
        # A fragmented mp4 declares its track up front, so the file has a video stream but no frame.
        with av.open(str(clip), "w", options={"movflags": "frag_keyframe+empty_moov"}) as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            container.start_encoding()
        return [clip, "--mask", mask], "has no frames"
    if case == "video mp4 without samples":
        with av.open(str(clip), "w") as container:  # a plain mp4 drops a track without samples
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            container.start_encoding()
        return [clip, "--mask", mask], "no video stream"
    if case == "video zero bytes":
        clip.write_bytes(b"")
        return [clip, "--mask", mask], "not a readable video"
    if case == "video cut at a packet boundary":
        corpus.cut_mp4(clip, frames, encode, at_packet=True)
        return [clip, "--mask", mask], "of 30 frames"
    if case == "video cut mid-packet":
        corpus.cut_mp4(clip, frames, encode, at_packet=False)
        return [clip, "--mask", mask], "damaged"
    if case == "mask is text":
        mask.write_text("not an image\n")
        return [clip, "--mask", mask], "not a readable image"
    if case == "mask has no object":
        cv2.imwrite(str(mask), np.zeros((96, 128), dtype=np.uint8))
        return [clip, "--mask", mask], "no object pixels"
    if case == "mask of another shape":
        cv2.imwrite(str(mask), np.full((96, 96), 255, dtype=np.uint8))
        return [clip, "--mask", mask, "--masks-dir", folder / "m"], "different shape"
    # Output folders. We run as root, so a read-only folder cannot be tested: root writes anyway.
    # A missing output folder is created (tests/test_corpus_outputs.py), so it is not a bad case.
    if case == "output folder is a file":
        (folder / "afile").write_text("x")
        return [clip, "--mask", mask, "-o", folder / "afile" / "out.mp4"], "is a file, not a folder"
    if case == "masks dir is a file":
        (folder / "afile").write_text("x")
        return [clip, "--mask", mask, "--no-overlay", "--masks-dir", folder / "afile"], "not a folder"
    if case == "mask video of unknown type":
        return [clip, "--mask", mask, "--no-overlay", "--mask-video", folder / "m.gif"], "cannot be written"
    raise AssertionError(case)


BAD_CASES = [
    "missing input",
    "video is text",
    "video mp4 without frames",
    "video mp4 without samples",
    "video zero bytes",
    "video cut at a packet boundary",
    "video cut mid-packet",
    "mask is text",
    "mask has no object",
    "mask of another shape",
    "output folder is a file",
    "masks dir is a file",
    "mask video of unknown type",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_cleanly_and_writes_nothing(case, tmp_path, encode, run_cli, tiny_model_file):
    args, expected = make_bad_case(case, tmp_path, encode)
    before = corpus.listing(tmp_path)
    result = run_cli(["segment", *args, "--model", tiny_model_file])
    corpus.assert_clean_failure(result, contains=expected, bar=True)
    assert corpus.listing(tmp_path) == before, "no output and no temporary file may remain"


def test_truncated_video_names_the_frames_it_got(tmp_path, encode, run_cli, tiny_model_file):
    args, _ = make_bad_case("video cut at a packet boundary", tmp_path, encode)
    with av.open(str(args[0])) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    assert 0 < decodable < 30
    message = corpus.assert_clean_failure(run_cli(["segment", *args, "--model", tiny_model_file]), bar=True)
    assert f"ended after {decodable} of 30 frames" in message


# ---- Ctrl-C through segment_file and the CLI ----------------------------------------------------


def test_ctrl_c_leaves_no_output_and_the_input_untouched(tmp_path, dog_small_clip, tiny_model):
    clip, mask = dog_small_clip
    digest = corpus.sha256(clip)
    before = corpus.listing(tmp_path)

    def interrupt(done: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_file(
            video=clip,
            mask=mask,
            model=tiny_model,
            config=SessionConfig(),
            device="cpu",
            masks_dir=tmp_path / "masks",
            mask_video=tmp_path / "masks.mkv",
            on_frame=interrupt,
        )
    assert corpus.listing(tmp_path) == before
    assert corpus.sha256(clip) == digest


def test_ctrl_c_in_the_cli_exits_130(tmp_path, dog_small_clip, run_cli, tiny_model_file, monkeypatch):
    clip, mask = dog_small_clip

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr("vosctl.commands.segment.segment_file", interrupted)
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file])
    assert result.exit_code == 130
    assert "Interrupted" in result.output and "Traceback" not in result.output
