"""``vosctl batch``: DAVIS layouts and video folders, a broken video, resume, shards, the same results as segment."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.errors import VosError
from vosctl.batch_run import my_share, parse_shard, torchrun_rank

from .conftest import davis_frames, davis_masks

SIZE = (128, 72)
SEQUENCES = ("bus", "rhino", "car-turn")


def fast(model_file):
    return ["--model", model_file, "--max-size", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def davis_like(davis_root, tmp_path_factory) -> Path:
    """Three real sequences, 6 frames at 128x72 in the DAVIS layout, annotated on every frame; car-turn's
    fourth frame is a damaged JPEG."""
    root = tmp_path_factory.mktemp("davis-like")
    for seq in SEQUENCES:
        frames = root / "JPEGImages" / "480p" / seq
        masks = root / "Annotations" / "480p" / seq
        frames.mkdir(parents=True)
        masks.mkdir(parents=True)
        pairs = zip(davis_frames(davis_root, seq, 6, SIZE), davis_masks(davis_root, seq, 6), strict=True)
        for i, (frame, mask) in enumerate(pairs):
            cv2.imwrite(str(frames / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            small = cv2.resize(mask.astype(np.uint8) * 255, SIZE, interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(masks / f"{i:05d}.png"), small)
    (root / "JPEGImages" / "480p" / "car-turn" / "00003.jpg").write_bytes(b"not a jpeg")
    lists = root / "ImageSets" / "480p"
    lists.mkdir(parents=True)
    (lists / "good.txt").write_text(
        "".join(f"/JPEGImages/480p/{s}/00000.jpg /Annotations/480p/{s}/00000.png\n" for s in SEQUENCES[:2])
    )
    return root


def test_a_broken_video_is_reported_and_the_others_finish_then_resume_skips_them(
    davis_like, tiny_model_file, run_cli, tmp_path
):
    out = tmp_path / "results"
    result = run_cli(["batch", davis_like, "--out", out, *fast(tiny_model_file)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "3 of 3 videos: 2 segmented, 0 already complete, 1 failed" in text
    assert "failed car-turn:" in text and "00003.jpg" in text
    for seq in SEQUENCES[:2]:
        assert sorted(p.name for p in (out / seq).glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    assert not (out / "car-turn").exists()
    stamp = (out / "bus" / "00000.png").stat().st_mtime_ns
    again = run_cli(["batch", davis_like, "--out", out, "--resume", *fast(tiny_model_file)])
    assert again.exit_code == 1
    assert "0 segmented, 2 already complete, 1 failed" in " ".join(again.output.split())
    assert (out / "bus" / "00000.png").stat().st_mtime_ns == stamp
    # the DAVIS results layout: vosctl eval scores it, and it equals vosctl segment run on each sequence
    scored = run_cli(
        ["eval", "davis16", "--data", davis_like, "--split", "good", "--results", out, "--out", tmp_path / "s"]
    )
    assert scored.exit_code == 0, scored.output
    for seq in SEQUENCES[:2]:
        alone = tmp_path / f"alone-{seq}"
        first = davis_like / "Annotations" / "480p" / seq / "00000.png"
        args = ["segment", davis_like / "JPEGImages" / "480p" / seq, "--mask", first, "--masks-dir", alone]
        assert run_cli([*args, "--no-overlay", *fast(tiny_model_file)]).exit_code == 0
        for i in range(6):
            assert np.array_equal(
                np.array(Image.open(alone / f"{i:05d}.png")), np.array(Image.open(out / seq / f"{i:05d}.png"))
            )


def test_a_folder_of_videos_with_first_frame_and_sparse_annotations(
    davis_root, tiny_model_file, run_cli, tmp_path, encode
):
    root = tmp_path / "videos"
    root.mkdir()
    frames = davis_frames(davis_root, "bus", 8, SIZE)
    truth = [
        cv2.resize(m.astype(np.uint8) * 255, SIZE, interpolation=cv2.INTER_NEAREST)
        for m in davis_masks(davis_root, "bus", 8)
    ]
    encode(root / "a.mp4", frames)
    cv2.imwrite(str(root / "a.png"), truth[0])
    encode(root / "b.mp4", frames)
    (root / "b").mkdir()
    cv2.imwrite(str(root / "b" / "frame_000004.png"), truth[4])
    out = tmp_path / "out"
    result = run_cli(["batch", root, "--out", out, "--overlay", "--shard", "0/1", *fast(tiny_model_file)])
    assert result.exit_code == 0, result.output
    assert "2 of 2 videos (shard 0/1): 2 segmented" in " ".join(result.output.split())
    for name in ("a", "b"):
        assert len(list((out / name).glob("*.png"))) == 8 and (out / f"{name}.vos.mp4").is_file()
    assert np.array_equal(np.array(Image.open(out / "b" / "00004.png")) > 0, truth[4] > 0)


def test_shards_and_torchrun_ranks_split_the_videos_exactly(monkeypatch):
    videos = list(range(23))
    shards = [my_share(videos, (i, 4)) for i in range(4)]
    assert sorted(v for s in shards for v in s) == videos and shards[1] == [1, 5, 9, 13, 17, 21]
    ranks = [my_share(videos, (1, 4), (r, 2)) for r in range(2)]
    assert ranks == [[1, 9, 17], [5, 13, 21]]
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert torchrun_rank() == (2, 3)
    monkeypatch.delenv("WORLD_SIZE")
    assert torchrun_rank() == (0, 1)
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "a/b", "0/0"):
        with pytest.raises(VosError, match="--shard"):
            parse_shard(bad)
