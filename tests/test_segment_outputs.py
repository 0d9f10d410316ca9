"""``vosctl segment`` end to end, what it writes: the real dog-agility sequence with the default model
(quality, --batch, the masks folder, the overlay video), then small clips with the tiny model (audio,
two objects, the mask video, a folder of frames as input, a mask of another size, --overwrite)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vosctl.outputs import MARKER
from vosctl.palette import davis_palette

from . import corpus
from .conftest import DOG_SEQUENCE, DOG_SMALL, davis_frames, davis_masks

pytestmark = pytest.mark.slow

# Measured with the untrained ImageNet features (default settings, CPU): mean J = 0.80 on frames 1..23.
MIN_MEAN_J = 0.75


# ---- helpers ------------------------------------------------------------------------------------


def video_frames(path: Path) -> tuple[list[np.ndarray], list[int], dict]:
    """Decode every frame of ``path`` -> (RGB frames, pts, a description of the stream)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"rate": stream.average_rate, "width": stream.width, "height": stream.height}
        frames, pts = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
    return frames, pts, info


def audio_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [p for p in container.demux(container.streams.audio[0]) if p.size > 0]


def palette_png(path: Path, ids: np.ndarray, palette: np.ndarray) -> Path:
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(path)
    return path


def read_png(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    with Image.open(path) as image:
        return image.mode, np.array(image), np.array(image.getpalette()[:768], dtype=np.uint8).reshape(-1, 3)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


# ---- the real sequence with the default model ---------------------------------------------------


@pytest.fixture(scope="module")
def dog_run(davis_root, tmp_path_factory, encode, run_cli, one_torch_thread):
    """``vosctl segment clip.mp4 --mask first.png --masks-dir masks`` on dog-agility, default model."""
    folder = tmp_path_factory.mktemp("dog")
    clip = encode(folder / "clip.mp4", davis_frames(davis_root, DOG_SEQUENCE))
    first = folder / "first.png"
    shutil.copy(davis_root / "Annotations" / "480p" / DOG_SEQUENCE / "00000.png", first)
    result = run_cli(["segment", clip, "--mask", first, "--masks-dir", folder / "masks", "--device", "cpu"])
    return {"folder": folder, "clip": clip, "first": first, "masks": folder / "masks", "result": result}


def test_default_model_tracks_the_dog(dog_run, davis_root):
    result = dog_run["result"]
    assert result.exit_code == 0, result.output
    assert "Segmented 25 frames" in result.output
    truth = davis_masks(davis_root, DOG_SEQUENCE)
    scores = []
    for index in range(1, len(truth) - 1):
        _, ids, _ = read_png(dog_run["masks"] / f"{index:05d}.png")
        scores.append(jaccard(ids > 0, truth[index]))
    print(f"{DOG_SEQUENCE}: mean J = {np.mean(scores):.3f}, min = {np.min(scores):.3f}")
    assert np.mean(scores) >= MIN_MEAN_J
    assert np.min(scores) >= 0.5


def test_batch_8_gives_the_masks_of_batch_1(dog_run, run_cli):
    """``--batch 8`` embeds eight frames at once; the float32 network's batched arithmetic may round
    differently, so up to 0.1% of a frame's pixels may change label (in practice none)."""
    assert dog_run["result"].exit_code == 0
    masks8 = dog_run["folder"] / "masks8"
    args = ["segment", dog_run["clip"], "--mask", dog_run["first"], "--masks-dir", masks8, "--no-overlay"]
    result = run_cli([*args, "--device", "cpu", "--batch", "8"])
    assert result.exit_code == 0, result.output
    for index in range(25):
        _, one, _ = read_png(dog_run["masks"] / f"{index:05d}.png")
        _, eight, _ = read_png(masks8 / f"{index:05d}.png")
        assert (one != eight).mean() <= 1e-3, index


def test_masks_dir_holds_one_palette_png_per_frame(dog_run):
    assert dog_run["result"].exit_code == 0
    names = sorted(p.name for p in dog_run["masks"].iterdir())
    assert names == [MARKER] + [f"{i:05d}.png" for i in range(25)], "the frames and vosctl's marker"
    mode, ids, palette = read_png(dog_run["masks"] / "00000.png")
    assert mode == "P" and ids.shape == (480, 854)
    given = cv2.imread(str(dog_run["first"]), cv2.IMREAD_GRAYSCALE) > 0
    assert np.array_equal(ids > 0, given), "the first frame's output is the given mask"
    assert set(np.unique(ids).tolist()) == {0, 1}
    assert np.array_equal(palette[:2], davis_palette()[:2])


def test_overlay_video_keeps_frames_rate_and_timestamps(dog_run):
    assert dog_run["result"].exit_code == 0
    overlay = dog_run["folder"] / "clip.vos.mp4"
    assert overlay.is_file()
    in_frames, in_pts, in_info = video_frames(dog_run["clip"])
    out_frames, out_pts, out_info = video_frames(overlay)
    assert len(out_frames) == len(in_frames) == 25
    assert out_info == in_info
    assert out_pts == in_pts
    # The overlay tints the dog: inside the first mask the colour moved towards red, outside hardly.
    given = cv2.imread(str(dog_run["first"]), cv2.IMREAD_GRAYSCALE) > 0
    diff = np.abs(out_frames[0].astype(int) - in_frames[0].astype(int)).mean(axis=2)
    assert diff[given].mean() > 20 > diff[~given].mean()
    hidden = [p.name for p in dog_run["folder"].iterdir() if p.name.startswith(".")]
    assert hidden == [], "no temporary files left"


def test_overlay_is_encoded_on_one_thread_at_the_overlay_preset(dog_run):
    # x264 writes its settings into the stream: one thread (the compute threads take the cores),
    # and superfast's sub-pixel refinement (veryfast's is 2).
    data = (dog_run["folder"] / "clip.vos.mp4").read_bytes()
    start = data.index(b"x264 - core")
    settings = dict(
        item.split("=", 1) for item in data[start : data.index(b"\0", start)].decode().split() if "=" in item
    )
    assert settings["threads"] == "1"
    assert settings["subme"] == "1"
    assert settings["crf"] == "20.0"


# ---- smaller clips with the tiny model ----------------------------------------------------------


def test_audio_is_carried_over(tmp_path, dog_small_frames, dog_small_mask, encode, run_cli, tiny_model_file):
    clip = encode(tmp_path / "talk.mp4", dog_small_frames, audio=True)
    cv2.imwrite(str(tmp_path / "first.png"), dog_small_mask)
    source_audio = audio_packets(clip)
    assert source_audio, "the test clip has an audio track"
    result = run_cli(["segment", clip, "--mask", tmp_path / "first.png", "--model", tiny_model_file])
    assert result.exit_code == 0, result.output
    overlay = tmp_path / "talk.vos.mp4"
    out_audio = audio_packets(overlay)
    with av.open(str(overlay)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    assert len(out_audio) == len(source_audio)
    assert [bytes(p) for p in out_audio] == [bytes(p) for p in source_audio], "copied, not re-encoded"
    assert len(video_frames(overlay)[0]) == 25


def test_two_objects_keep_their_ids_and_palette(tmp_path, davis_root, encode, run_cli, one_torch_thread):
    frames = davis_frames(davis_root, "bear", count=8)
    clip = encode(tmp_path / "bear.mp4", frames)
    truth = davis_masks(davis_root, "bear", count=1)[0]
    columns = np.nonzero(truth.any(axis=0))[0]
    middle = (columns.min() + columns.max()) // 2
    ids = np.zeros(truth.shape, dtype=np.uint8)
    ids[:, :middle][truth[:, :middle]] = 1
    ids[:, middle:][truth[:, middle:]] = 2
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1], palette[2] = (0, 200, 0), (200, 0, 200)
    mask = palette_png(tmp_path / "two.png", ids, palette)
    result = run_cli(
        ["segment", clip, "--mask", mask, "--masks-dir", tmp_path / "out", "--no-overlay"]
        + ["--model", "imagenet", "--max-size", "256", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    both = 0
    for index in range(8):
        mode, out, out_palette = read_png(tmp_path / "out" / f"{index:05d}.png")
        assert mode == "P"
        assert set(np.unique(out).tolist()) <= {0, 1, 2}
        assert np.array_equal(out_palette[:3], palette[:3])
        present = set(np.unique(out).tolist())
        both += {1, 2} <= present
        if {1, 2} <= present:  # left stays left of right
            assert np.nonzero(out == 1)[1].mean() < np.nonzero(out == 2)[1].mean()
    assert both >= 6, f"both objects on only {both} of 8 frames"
    assert not (tmp_path / "bear.vos.mp4").exists(), "--no-overlay writes no overlay"


def test_mask_video_is_lossless(tmp_path, dog_small_clip, run_cli, tiny_model_file):
    clip, mask = dog_small_clip
    result = run_cli(
        ["segment", clip, "--mask", mask, "--model", tiny_model_file, "--no-overlay"]
        + ["--mask-video", tmp_path / "masks.mp4", "--masks-dir", tmp_path / "masks"]
    )
    assert result.exit_code == 0, result.output
    frames, pts, _ = video_frames(tmp_path / "masks.mp4")
    assert len(frames) == 25
    assert pts == video_frames(clip)[1]
    davis = davis_palette().astype(np.int64)
    seen = set()
    colour_to_id = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(davis[:8])}
    for index, frame in enumerate(frames):
        codes = (frame[..., 0].astype(np.int64) << 16) | (frame[..., 1].astype(np.int64) << 8) | frame[..., 2]
        assert set(np.unique(codes).tolist()) <= set(colour_to_id), f"frame {index}: colours off the palette"
        decoded = np.vectorize(colour_to_id.get)(codes)
        _, ids, _ = read_png(tmp_path / "masks" / f"{index:05d}.png")
        assert np.array_equal(decoded, ids), f"frame {index}"
        seen |= set(np.unique(ids).tolist())
    assert seen == {0, 1}
    # Outputs get the permissions of any new file or folder, not the private ones of temp files.
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "masks.mp4").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "masks").stat().st_mode & 0o777 == 0o777 & ~umask


def test_folder_of_frames_as_input(tmp_path, davis_root, run_cli, tiny_model_file):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, rgb in enumerate(davis_frames(davis_root, DOG_SEQUENCE, count=6, size=DOG_SMALL)):
        cv2.imwrite(str(frames / f"{index:05d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    mask = tmp_path / "first.png"
    shutil.copy(davis_root / "Annotations" / "480p" / DOG_SEQUENCE / "00000.png", mask)  # 854x480: resized
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = ["segment", frames, "--mask", mask, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"]
        result = run_cli([*args, "--threads", "4"])
        assert torch.get_num_threads() == 2, "--threads 4: two for each of the two compute threads"
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    out_frames, _, info = video_frames(tmp_path / "frames.vos.mp4")
    assert len(out_frames) == 6 and (info["width"], info["height"]) == DOG_SMALL
    assert info["rate"] == 24


def test_mask_of_another_size_is_resized_with_a_note(tmp_path, davis_root, dog_small_clip, run_cli, tiny_model_file):
    clip, _ = dog_small_clip
    big = tmp_path / "big.png"
    shutil.copy(davis_root / "Annotations" / "480p" / DOG_SEQUENCE / "00000.png", big)
    result = run_cli(["segment", clip, "--mask", big, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Note:" in text and "854x480" in text and "resized" in text
    _, ids, _ = read_png(tmp_path / "m" / "00000.png")
    assert ids.shape == (DOG_SMALL[1], DOG_SMALL[0])


def test_existing_output_needs_overwrite(tmp_path, dog_small_clip, run_cli, tiny_model_file):
    clip, mask = dog_small_clip
    existing = tmp_path / "clip.vos.mp4"
    existing.write_bytes(b"an older result")
    before = corpus.listing(tmp_path)
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file])
    corpus.assert_clean_failure(result, contains="--overwrite", bar=True)
    assert existing.read_bytes() == b"an older result"
    assert corpus.listing(tmp_path) == before
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(video_frames(existing)[0]) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
