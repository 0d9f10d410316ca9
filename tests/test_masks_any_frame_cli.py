"""``vosctl segment`` with masks on any frame: --mask N=PATH, --masks-in, --direction, bad inputs, flat memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.metrics import jaccard
from vosctl.pipeline import segment_file

from .conftest import davis_frames, davis_masks

SIZE = (128, 72)
FAST = ["--max-size", "128", "--threads", "1", "--no-overlay"]


def read_ids(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def small_truth(root, sequence, count):
    return [
        cv2.resize(m.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST)
        for m in davis_masks(root, sequence, count)
    ]


def palette_png(path: Path, ids: np.ndarray) -> Path:
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def bus(davis_root, tmp_path_factory, encode):
    folder = tmp_path_factory.mktemp("bus")
    clip = encode(folder / "bus.mp4", davis_frames(davis_root, "bus", 20, SIZE))
    return clip, small_truth(davis_root, "bus", 20)


def test_a_middle_frame_mask_is_propagated_both_ways(bus, run_cli, tmp_path, one_torch_thread):
    clip, truth = bus
    mask = tmp_path / "m10.png"
    cv2.imwrite(str(mask), truth[10] * 255)
    result = run_cli(["segment", clip, "--mask", f"10={mask}", "--masks-dir", tmp_path / "out", *FAST])
    assert result.exit_code == 0, result.output
    scores = [jaccard(read_ids(tmp_path / "out" / f"{i:05d}.png") > 0, truth[i] > 0) for i in range(20)]
    assert scores[10] == 1.0
    before, after = np.mean(scores[:10]), np.mean(scores[11:])
    assert before > 0.7 and after > 0.7 and abs(before - after) < 0.05


def test_an_object_given_in_a_later_mask_is_absent_before_it(bus, run_cli, tmp_path, one_torch_thread):
    clip, truth = bus
    columns = np.nonzero(truth[0].any(axis=0))[0]
    middle = (columns.min() + columns.max()) // 2
    first = truth[0].copy()
    first[:, middle:] = 0
    later = truth[8].copy()
    later[:, middle:] *= 2
    a, b = palette_png(tmp_path / "a.png", first), palette_png(tmp_path / "b.png", later)
    out = tmp_path / "out"
    result = run_cli(["segment", clip, "--mask", f"0={a}", "--mask", f"8={b}", "--masks-dir", out, *FAST])
    assert result.exit_code == 0, result.output
    masks = [read_ids(out / f"{i:05d}.png") for i in range(20)]
    assert all(not (m == 2).any() for m in masks[:8])
    assert np.array_equal(masks[8], later)
    assert all((m == 1).sum() > 50 and (m == 2).sum() > 50 for m in masks[9:])


def test_a_mixed_format_masks_in_folder_with_direction_forward(bus, run_cli, tmp_path, one_torch_thread):
    clip, truth = bus
    folder = tmp_path / "given"
    folder.mkdir()
    cv2.imwrite(str(folder / "00003.png"), truth[3] * 255)  # binary 0/255: object 1
    rgb = np.zeros((*truth[9].shape, 3), np.uint8)
    rgb[truth[9] > 0] = (128, 0, 0)  # the DAVIS colour of object 1
    Image.fromarray(rgb).save(folder / "frame_000009.png")
    rgba = np.zeros((*truth[14].shape, 4), np.uint8)
    rgba[truth[14] > 0] = (128, 0, 0, 255)  # transparent background
    Image.fromarray(rgba, mode="RGBA").save(folder / "clip_14.png")
    palette_png(folder / "17.png", truth[17])  # palette index 1
    (folder / "README.txt").write_text("not a mask")
    out = tmp_path / "out"
    result = run_cli(["segment", clip, "--masks-in", folder, "--direction", "forward", "--masks-dir", out, *FAST])
    assert result.exit_code == 0, result.output
    masks = [read_ids(out / f"{i:05d}.png") for i in range(20)]
    assert all(not m.any() for m in masks[:3])  # before the first mask, forward only: background
    for i in (3, 9, 14, 17):
        assert np.array_equal(masks[i] > 0, truth[i] > 0)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1}


def test_bad_mask_sets_are_clear_errors_with_nothing_written(bus, run_cli, tmp_path, encode):
    clip, truth = bus
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), truth[0] * 255)
    square = tmp_path / "square.png"
    cv2.imwrite(str(square), np.full((50, 50), 255, np.uint8))
    folder = tmp_path / "given"
    folder.mkdir()
    cv2.imwrite(str(folder / "00000.png"), truth[0] * 255)
    mkv = encode(tmp_path / "uncounted.mkv", davis_frames_like(truth), codec="ffv1", pix_fmt="bgr0")
    cases = [
        ([clip, "--mask", f"25={good}"], "frame 25, but the video has 20 frames"),
        ([mkv, "--mask", good, "--mask", f"30={good}"], "is for frame 30, but the video has 20 frames"),
        ([clip, "--mask", f"3={good}", "--mask", f"3={square}"], "Two masks for frame 3"),
        ([clip, "--mask", good, "--masks-in", folder], "Two masks for frame 0"),
        ([clip, "--mask", good, "--mask", f"5={square}"], "a different shape (the mask of frame 5"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = run_cli(["segment", *args, "--masks-dir", out, "-o", tmp_path / "o.mp4", "--max-size", "64"])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split()), result.output
        assert not out.exists() and not (tmp_path / "o.mp4").exists()
        assert not [p for p in tmp_path.iterdir() if ".vosctl-" in p.name]


def davis_frames_like(truth):
    return [np.repeat((m * 200)[..., None], 3, axis=2).astype(np.uint8) for m in truth]


def test_memory_stays_flat_in_video_length_on_a_backward_pass(tiny_model, tmp_path, one_torch_thread):
    """The whole video lies before the mask: every frame goes through the store and the backward pass."""
    rng = np.random.default_rng(0)
    mask = tmp_path / "mask.png"
    ids = np.zeros((48, 64), np.uint8)
    ids[10:30, 20:40] = 255
    cv2.imwrite(str(mask), ids)
    from engine.session import session_config_for

    config = session_config_for(tiny_model, max_size=64, refine="none")

    def peak(count: int) -> int:
        folder = tmp_path / f"frames{count}"
        folder.mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / f"{i:05d}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        tracemalloc.start()
        segment_file(
            video=folder,
            masks=[f"{count - 1}={mask}"],
            model=tiny_model,
            config=config,
            device="cpu",
            overlay=False,
            masks_dir=tmp_path / f"out{count}",
        )
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(list((tmp_path / f"out{count}").glob("*.png"))) == count
        return top

    short, long = peak(60), peak(300)
    frame_bytes = 48 * 64 * 3
    # 240 more frames held would be 240 * frame_bytes. The bounded queues (8 decoded frames ahead, 4
    # refine/encode jobs of a frame and its probabilities, ~4 frame sizes each) may be full or empty
    # at the peak depending on thread timing: ~24 frame sizes either way, so allow 60.
    assert long - short < 60 * frame_bytes, (short, long)


@pytest.mark.parametrize(
    ("preset", "ahead_expected"), [("accurate", list(range(8))), (None, list(range(8))), ("fast", [])]
)
def test_the_network_thread_gives_the_masks_of_the_serial_pipeline(
    tiny_model, tmp_path, monkeypatch, preset, ahead_expected
):
    """With its threads the CLI embeds each frame of the forward pass a frame ahead, on a thread of
    its own, where every frame may be seen (the defaults and ``accurate``: frames carried by motion);
    the masks equal those of the serial pipeline (``encode_thread=False``), also when the pass starts
    at a later mask. With ``fast``'s fixed interval the engine's thread embeds its key frames itself."""
    from engine.session import VideoSession, session_config_for

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        image = np.full((48, 64, 3), 40, np.uint8)
        image[10:30, 8 + 2 * i : 28 + 2 * i] = (200, 60, 60)
        cv2.imwrite(str(folder / f"{i:05d}.png"), image)
    ids = np.zeros((48, 64), np.uint8)
    ids[10:30, 16:36] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), ids)
    config = session_config_for(tiny_model, preset=preset, max_size=64, refine="none")
    ahead: list[int] = []
    real = VideoSession.embed_ahead
    monkeypatch.setattr(VideoSession, "embed_ahead", lambda self, f, p: ahead.append(p) or real(self, f, p))
    outputs = {}
    for threads in (True, False):
        out = tmp_path / f"masks-{threads}"
        segment_file(
            video=folder,
            masks=[f"4={tmp_path / 'mask.png'}"],
            model=tiny_model,
            config=config,
            device="cpu",
            overlay=False,
            masks_dir=out,
            encode_thread=threads,
        )
        outputs[threads] = np.stack([read_ids(p) for p in sorted(out.glob("*.png"))])
    assert ahead == ahead_expected  # frames 4-11, the forward pass, each once; in the serial run none
    assert outputs[True].shape[0] == 12 and np.array_equal(outputs[True], outputs[False])
    assert all(outputs[True][i].any() for i in range(4, 11))  # the untrained model's mask fades by frame 11
