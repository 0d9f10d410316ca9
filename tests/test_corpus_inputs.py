"""The bad-input corpus, inputs: every kind of video and mask a new user might give ``vosctl segment``.

Each case copies its inputs into a fresh folder and asserts the exit code, the message, that nothing
is left behind on failure (hidden files included), and that the inputs' bytes are unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vosctl.masks import read_mask

from .corpus import FAST, SIZE, assert_clean_failure, bear_mask, build_videos, digests, listing


@dataclass(frozen=True)
class Case:
    video: str  # a name in build_videos, or "missing"
    mask: str = "binary"  # a name in build_masks, or "missing"
    fails: str | None = None  # part of the expected message; None: the run succeeds
    note: str | None = None  # part of an expected note on success
    midway: bool = False  # fails after the first frame (a progress bar may precede the error)
    extra: tuple[str, ...] = ()


VIDEO_CASES = {
    "mp4 h264": Case("clip"),
    "one frame": Case("one frame"),
    "odd size 853x479": Case("odd size 853x479", mask="odd"),
    "rotated, mask as displayed": Case("rotated 90", mask="rotated"),
    "rotated, mask of the stored shape": Case("rotated 90", fails="rotation metadata"),
    "variable frame rate": Case("variable frame rate"),
    "10-bit yuv420p10le": Case("10-bit yuv420p10le"),
    "grey video": Case("grey"),
    "mkv ffv1": Case("mkv ffv1"),
    "webm vp9": Case("webm vp9"),
    "avi mjpeg": Case("avi mjpeg"),
    "with audio": Case("with audio"),
    "missing input": Case("missing", fails="does not exist"),
    "text file": Case("text", fails="not a readable video"),
    "zero bytes": Case("zero bytes", fails="not a readable video"),
    "broken bytes mid-file (the decoder conceals them)": Case("broken bytes"),
    "broken header": Case("broken header", fails="not a readable video"),
    "audio only": Case("audio only", fails="no video stream"),
    "cut at a packet boundary": Case("cut at a packet boundary", fails="damaged or truncated", midway=True),
    "cut mid-packet": Case("cut mid-packet", fails="damaged", midway=True),
    "frames folder jpg": Case("frames jpg"),
    "frames folder png": Case("frames png"),
    "frames folder and a text file": Case("frames and a text file"),
    "frames of mixed sizes": Case("frames of mixed sizes", fails="different size", midway=True),
    "frames with an unreadable frame": Case("frames with an unreadable frame", fails="not a readable", midway=True),
    "folder without frames": Case("folder without frames", fails="no JPEG or PNG frames"),
}

MASK_CASES = {
    "binary 0/255": Case("clip", "binary"),
    "binary 0/1": Case("clip", "binary 0/1"),
    "16-bit binary": Case("clip", "16-bit"),
    "grey levels as ids": Case("clip", "grey ids"),
    "soft grey": Case("clip", "soft grey", note="threshold"),
    "jpeg": Case("clip", "jpeg", note="threshold"),
    "palette, two objects": Case("clip", "palette"),
    "rgb colours": Case("clip", "rgb"),
    "rgba, transparent white background": Case("clip", "rgba"),
    "rgba, antialiased edge": Case("clip", "rgba soft", note="soft edges"),
    "rgba, two colours, antialiased": Case("clip", "rgba two", note="soft edges"),
    "grey with alpha (LA)": Case("clip", "la"),
    "palette with a transparent index": Case("clip", "palette transparent"),
    "same aspect, larger": Case("clip", "large", note="resized"),
    "another shape": Case("clip", "square", fails="different shape"),
    "no object": Case("clip", "zero", fails="no object pixels"),
    "rgba, all transparent": Case("clip", "rgba clear", fails="no object pixels"),
    "too many colours": Case("clip", "noise", fails="more than 255 colours"),
    "text as mask": Case("clip", "text", fails="not a readable image"),
    "missing mask": Case("clip", "missing", fails="does not exist"),
    "mask is a folder": Case("clip", "folder", fails="is a folder"),
}

OPTION_CASES = {  # out-of-range values: typer's usage error, exit 2
    "--max-size 0": Case("clip", extra=("--max-size", "0")),
    "--threads 0": Case("clip", extra=("--threads", "0")),
    "--fps 0": Case("frames jpg", extra=("--fps", "0")),
    "--k 0": Case("clip", extra=("--k", "0")),
}


def build_masks(folder: Path) -> dict[str, Path]:
    drawn = bear_mask() > 0
    h, w = drawn.shape
    masks: dict[str, Path] = {}

    def save(name: str, array: np.ndarray, mode: str | None = None, file: str | None = None, **info) -> None:
        path = folder / (file or f"{name.replace(' ', '_').replace('/', '')}.png")
        Image.fromarray(array, mode=mode).save(path, **info)
        masks[name] = path

    save("binary", drawn.astype(np.uint8) * 255, "L")
    save("binary 0/1", drawn.astype(np.uint8), "L")
    save("16-bit", drawn.astype(np.uint16) * 65535)
    columns = np.nonzero(drawn.any(axis=0))[0]
    middle = (columns.min() + columns.max()) // 2  # the bear's left half is object 1, its right half 2
    two = drawn.astype(np.uint8)
    two[:, middle:] *= 2
    save("grey ids", two, "L")
    soft = cv2.GaussianBlur(drawn.astype(np.float32) * 255, (9, 9), 3).astype(np.uint8)
    save("soft grey", soft, "L")
    save("jpeg", drawn.astype(np.uint8) * 255, "L", file="mask.jpg", quality=60)
    palette_png = Image.fromarray(two, mode="P")
    palette_png.putpalette([0, 0, 0, 0, 200, 0, 200, 0, 200] + [0] * (768 - 9))
    palette_png.save(folder / "palette.png")
    masks["palette"] = folder / "palette.png"
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[drawn] = (255, 0, 0)
    save("rgb", rgb, "RGB")
    rgba = np.zeros((h, w, 4), dtype=np.uint8)
    rgba[~drawn], rgba[drawn] = (255, 255, 255, 0), (255, 0, 0, 255)
    save("rgba", rgba, "RGBA")
    edge = rgba.copy()  # drawn with an antialiased brush: colour and alpha blend at the edge
    blend = soft[..., None].astype(np.float32) / 255
    edge[..., :3] = (blend * np.array([255, 0, 0]) + (1 - blend) * 255).astype(np.uint8)
    edge[..., 3] = soft
    save("rgba soft", edge, "RGBA")
    colours = edge.copy()
    right = (np.arange(w) >= middle)[None]
    colours[right & (soft > 0), :3] = (blend * np.array([0, 0, 255]) + (1 - blend) * 255).astype(np.uint8)[
        right & (soft > 0)
    ]
    save("rgba two", colours, "RGBA")
    save("la", np.stack([np.full((h, w), 255, np.uint8), drawn.astype(np.uint8) * 255], axis=-1), "LA")
    indexed = Image.fromarray(np.where(drawn, 1, 7).astype(np.uint8), mode="P")
    indexed.putpalette([0, 0, 0, 255, 0, 0] + [255] * (768 - 6))
    indexed.save(folder / "ptrans.png", transparency=7)
    masks["palette transparent"] = folder / "ptrans.png"
    save("large", cv2.resize(drawn.astype(np.uint8) * 255, (w * 2, h * 2), interpolation=cv2.INTER_NEAREST), "L")
    save("square", np.full((h, h), 255, np.uint8), "L")
    save("zero", np.zeros((h, w), np.uint8), "L")
    clear = rgba.copy()
    clear[..., 3] = 0
    save("rgba clear", clear, "RGBA")
    save("noise", np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    save("odd", cv2.resize(drawn.astype(np.uint8) * 255, (853, 479), interpolation=cv2.INTER_NEAREST), "L")
    save("rotated", np.ascontiguousarray(np.rot90(drawn, -1)).astype(np.uint8) * 255, "L")
    (folder / "text.png").write_text("not an image\n")
    masks["text"] = folder / "text.png"
    (folder / "maskfolder").mkdir()
    masks["folder"] = folder / "maskfolder"
    return masks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, encode):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "masks").mkdir()
    return build_videos(folder, encode), build_masks(folder / "masks")


def place(case: Case, corpus, folder: Path) -> tuple[Path, Path]:
    """Copy the case's inputs into ``folder/in``: the run may only write beside them, never change them."""
    videos, masks = corpus
    inputs = folder / "in"
    inputs.mkdir()
    paths = []
    for name, table in ((case.video, videos), (case.mask, masks)):
        if name == "missing":
            paths.append(inputs / "absent.mp4")
            continue
        source = table[name]
        target = inputs / source.name
        shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
        paths.append(target)
    return paths[0], paths[1]


def run_case(case: Case, corpus, tmp_path, run_cli, model) -> None:
    video, mask = place(case, corpus, tmp_path)
    before, hashes = listing(tmp_path), digests(tmp_path)
    masks_dir = tmp_path / "out" / "masks"
    result = run_cli(["segment", video, "--mask", mask, "--masks-dir", masks_dir, "--model", model, *FAST])
    if case.fails is not None:
        assert_clean_failure(result, contains=case.fails, bar=case.midway)
        assert listing(tmp_path) == before, "no output, temporary file or folder may remain"
        return
    assert result.exit_code == 0, result.output
    after = digests(tmp_path)
    assert {k: after.get(k) for k in hashes} == hashes, "the inputs are unchanged"
    frames = sorted(masks_dir.glob("*.png"))
    text = " ".join(result.output.split())
    assert f"Segmented {len(frames)} frame" in text and len(frames) >= 1
    overlay = next(p for p in (tmp_path / "in").iterdir() if ".vos." in p.name)
    assert overlay.stat().st_size > 0
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".vosctl-masks"], "no temporary file left"
    if case.note is not None:
        assert "Note:" in text and case.note in text, text
    else:
        assert "Note:" not in text, text


@pytest.mark.parametrize("name", list(VIDEO_CASES))
def test_video(name, corpus, tmp_path, run_cli, tiny_model_file):
    run_case(VIDEO_CASES[name], corpus, tmp_path, run_cli, tiny_model_file)


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_mask(name, corpus, tmp_path, run_cli, tiny_model_file):
    run_case(MASK_CASES[name], corpus, tmp_path, run_cli, tiny_model_file)


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_out_of_range_option_is_a_usage_error(name, corpus, tmp_path, run_cli, tiny_model_file):
    case = OPTION_CASES[name]
    video, mask = place(case, corpus, tmp_path)
    before = listing(tmp_path)
    result = run_cli(["segment", video, "--mask", mask, "--model", tiny_model_file, *FAST, *case.extra])
    assert result.exit_code == 2, result.output
    assert case.extra[0] in result.output and "Traceback" not in result.output
    assert listing(tmp_path) == before


def test_one_frame_says_one_frame(corpus, tmp_path, run_cli, tiny_model_file):
    video, mask = place(Case("one frame"), corpus, tmp_path)
    result = run_cli(["segment", video, "--mask", mask, "--model", tiny_model_file, *FAST])
    assert result.exit_code == 0, result.output
    assert "Segmented 1 frame in" in " ".join(result.output.split())


def test_rotated_video_comes_out_as_displayed(corpus, tmp_path, run_cli, tiny_model_file):
    video, mask = place(Case("rotated 90", mask="rotated"), corpus, tmp_path)
    result = run_cli(["segment", video, "--mask", mask, "--masks-dir", tmp_path / "m", "--model", tiny_model_file])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "m" / "00000.png") as first:
        assert first.size == (SIZE[1], SIZE[0])


@pytest.mark.parametrize("name", ["rgba", "rgba soft", "la", "palette transparent", "rgba two"])
def test_transparent_pixels_are_background_whatever_their_colour(corpus, name):
    ids = read_mask(corpus[1][name]).ids
    if "soft" in name or "two" in name:  # the edge: at least half opaque is object
        drawn = cv2.GaussianBlur((bear_mask() > 0).astype(np.float32) * 255, (9, 9), 3).astype(np.uint8) >= 128
    else:
        drawn = bear_mask() > 0
    assert np.array_equal(ids > 0, drawn)
    assert set(np.unique(ids).tolist()) == ({0, 1, 2} if "two" in name else {0, 1})
