"""``vosctl segment`` end to end: real DAVIS video through the CLI, its outputs, and every way it can fail."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import SessionConfig
from vosctl.outputs import MARKER
from vosctl.palette import davis_palette
from vosctl.pipeline import segment_file

from . import corpus
from .conftest import davis_frames, davis_masks

pytestmark = pytest.mark.slow

SEQUENCE = "dog-agility"  # 25 frames, 854x480
SMALL = (256, 144)  # (w, h) of the downscaled clips the tiny-model runs use; 16:9 like DAVIS 480p
# Measured with the untrained ImageNet features (default settings, CPU): mean J = 0.80 on frames 1..23.
MIN_MEAN_J = 0.75


# ---- helpers ------------------------------------------------------------------------------------


def listing(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder``, hidden ones included, with its size (folders -1)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def assert_clean_failure(result, *, contains: str | None = None) -> str:
    """Exit code 1 and one sentence after ``Error:``, no traceback (tests.corpus's check; a progress
    bar may stand above it here: some of these cases fail after the first frame)."""
    return corpus.assert_clean_failure(result, contains=contains, bar=True)


# ---- the real sequence with the default model ---------------------------------------------------


@pytest.fixture(scope="module")
def dog_run(davis_root, tmp_path_factory, encode, run_cli, one_torch_thread):
    """``vosctl segment clip.mp4 --mask first.png --masks-dir masks`` on dog-agility, default model."""
    folder = tmp_path_factory.mktemp("dog")
    clip = encode(folder / "clip.mp4", davis_frames(davis_root, SEQUENCE))
    first = folder / "first.png"
    shutil.copy(davis_root / "Annotations" / "480p" / SEQUENCE / "00000.png", first)
    result = run_cli(["segment", clip, "--mask", first, "--masks-dir", folder / "masks", "--device", "cpu"])
    return {"folder": folder, "clip": clip, "first": first, "masks": folder / "masks", "result": result}


def test_default_model_tracks_the_dog(dog_run, davis_root):
    result = dog_run["result"]
    assert result.exit_code == 0, result.output
    assert "Segmented 25 frames" in result.output
    truth = davis_masks(davis_root, SEQUENCE)
    scores = []
    for index in range(1, len(truth) - 1):
        _, ids, _ = read_png(dog_run["masks"] / f"{index:05d}.png")
        scores.append(jaccard(ids > 0, truth[index]))
    print(f"{SEQUENCE}: mean J = {np.mean(scores):.3f}, min = {np.min(scores):.3f}")
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


# ---- smaller clips with the tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def small_frames(davis_root):
    return davis_frames(davis_root, SEQUENCE, size=SMALL)


@pytest.fixture(scope="module")
def small_mask(davis_root):
    """The first dog-agility mask at the small size, as a 0/255 PNG's pixels."""
    full = cv2.imread(str(davis_root / "Annotations" / "480p" / SEQUENCE / "00000.png"), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(full, SMALL, interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def small_clip(tmp_path, small_frames, small_mask, encode):
    clip = encode(tmp_path / "clip.mp4", small_frames)
    mask = tmp_path / "first.png"
    cv2.imwrite(str(mask), small_mask)
    return clip, mask


def test_audio_is_carried_over(tmp_path, small_frames, small_mask, encode, run_cli, tiny_model_file):
    clip = encode(tmp_path / "talk.mp4", small_frames, audio=True)
    cv2.imwrite(str(tmp_path / "first.png"), small_mask)
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


def test_mask_video_is_lossless(tmp_path, small_clip, run_cli, tiny_model_file):
    clip, mask = small_clip
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
    for index, rgb in enumerate(davis_frames(davis_root, SEQUENCE, count=6, size=SMALL)):
        cv2.imwrite(str(frames / f"{index:05d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    mask = tmp_path / "first.png"
    shutil.copy(davis_root / "Annotations" / "480p" / SEQUENCE / "00000.png", mask)  # 854x480: resized
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = ["segment", frames, "--mask", mask, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"]
        result = run_cli([*args, "--threads", "1"])
        assert torch.get_num_threads() == 1, "--threads sets torch's thread count"
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    out_frames, _, info = video_frames(tmp_path / "frames.vos.mp4")
    assert len(out_frames) == 6 and (info["width"], info["height"]) == SMALL
    assert info["rate"] == 24


def test_mask_of_another_size_is_resized_with_a_note(tmp_path, davis_root, small_clip, run_cli, tiny_model_file):
    clip, _ = small_clip
    big = tmp_path / "big.png"
    shutil.copy(davis_root / "Annotations" / "480p" / SEQUENCE / "00000.png", big)
    result = run_cli(["segment", clip, "--mask", big, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Note:" in text and "854x480" in text and "resized" in text
    _, ids, _ = read_png(tmp_path / "m" / "00000.png")
    assert ids.shape == (SMALL[1], SMALL[0])


def test_existing_output_needs_overwrite(tmp_path, small_clip, run_cli, tiny_model_file):
    clip, mask = small_clip
    existing = tmp_path / "clip.vos.mp4"
    existing.write_bytes(b"an older result")
    before = listing(tmp_path)
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file])
    assert_clean_failure(result, contains="--overwrite")
    assert existing.read_bytes() == b"an older result"
    assert listing(tmp_path) == before
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(video_frames(existing)[0]) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


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
    before = listing(tmp_path)
    result = run_cli(["segment", *args, "--model", tiny_model_file])
    assert_clean_failure(result, contains=expected)
    assert listing(tmp_path) == before, "no output and no temporary file may remain"


def test_truncated_video_names_the_frames_it_got(tmp_path, encode, run_cli, tiny_model_file):
    args, _ = make_bad_case("video cut at a packet boundary", tmp_path, encode)
    with av.open(str(args[0])) as container:
        decodable = sum(1 for _ in container.decode(video=0))
    assert 0 < decodable < 30
    message = assert_clean_failure(run_cli(["segment", *args, "--model", tiny_model_file]))
    assert f"ended after {decodable} of 30 frames" in message


# ---- Ctrl-C and long videos through segment_file ------------------------------------------------


def test_ctrl_c_leaves_no_output_and_the_input_untouched(tmp_path, small_clip, tiny_model):
    clip, mask = small_clip
    digest = sha256(clip)
    before = listing(tmp_path)

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
    assert listing(tmp_path) == before
    assert sha256(clip) == digest


def test_ctrl_c_in_the_cli_exits_130(tmp_path, small_clip, run_cli, tiny_model_file, monkeypatch):
    clip, mask = small_clip

    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr("vosctl.commands.segment.segment_file", interrupted)
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file])
    assert result.exit_code == 130
    assert "Interrupted" in result.output and "Traceback" not in result.output


def resident_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_stays_flat_on_a_long_video(tmp_path, encode, tiny_model, one_torch_thread):
    # 256x192: a pipeline that kept every decoded frame (147 KB each) would grow by 73 MB over the
    # measured 500 frames, well above the limit; at 128x96 such a leak would pass unnoticed.
    # A 2048-pixel online memory keeps each frame's k-NN scores (768 x 2816) small. With the default
    # 16384 pixels they are ~13-50 MB per frame, and glibc's heap then makes RSS swing by 100+ MB
    # from frame to frame (measured; the Python object count stays constant), which no RSS check survives.
    height, width, count = 192, 256, 600
    background = np.full((height, width, 3), 90, dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = background.copy()
        x = int((width - 48) * (0.5 + 0.5 * np.sin(index / 25)))
        frame[72:120, x : x + 48] = (230, 40, 40)
        frames.append(frame)
    clip = encode(tmp_path / "long.mkv", frames)
    del frames
    mask = np.zeros((height, width), dtype=np.uint8)
    x0 = int((width - 48) * 0.5)
    mask[72:120, x0 : x0 + 48] = 255
    cv2.imwrite(str(tmp_path / "first.png"), mask)
    samples: dict[int, int] = {}

    def sample(done: int) -> None:
        if done in (100, count):
            samples[done] = resident_bytes()

    result = segment_file(
        video=clip,
        mask=tmp_path / "first.png",
        model=tiny_model,
        config=SessionConfig(memory_size=2048),
        device="cpu",
        overlay=False,
        masks_dir=tmp_path / "masks",
        on_frame=sample,
    )
    assert result.frames == count
    assert len(list((tmp_path / "masks").glob("*.png"))) == count
    growth = samples[count] - samples[100]
    assert growth < 40 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 500 frames"


def test_profile_prints_seconds_per_frame_of_each_stage(tmp_path, small_clip, run_cli, tiny_model_file):
    clip, mask = small_clip
    args = ["segment", clip, "--mask", mask, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"]
    quiet = run_cli([*args, "--no-overlay"])
    assert quiet.exit_code == 0, quiet.output
    assert "by stage" not in quiet.output
    result = run_cli([*args, "--no-overlay", "--overwrite", "--profile"])
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split()).split("Seconds per frame by stage (threads overlap):")[1]
    stages = dict(item.strip(" .").split(" ") for item in line.split(","))
    assert {"embed", "retrieve", "refine", "encode"} <= set(stages)
    assert all(float(v) >= 0 for v in stages.values())
