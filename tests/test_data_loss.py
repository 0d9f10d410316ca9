"""The four ways ``vosctl segment`` lost data (issue #16), each reproduced exactly as reported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from .corpus import FAST, assert_clean_failure, bear_mask, digests, listing


@pytest.fixture
def clip_folder(tmp_path, bear_clip):
    """``clip/`` holding the input video, its mask and an unrelated notes file."""
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copy(bear_clip["clip"], folder / "clip.mp4")
    shutil.copy(bear_clip["mask"], folder / "mask.png")
    (folder / "notes.txt").write_text("my notes\n")
    return folder


@pytest.mark.parametrize("overlay", [False, True], ids=["no-overlay", "overlay"])
def test_masks_dir_over_the_input_folder_is_refused(clip_folder, tmp_path, run_cli, tiny_model_file, overlay):
    before, hashes = listing(tmp_path), digests(tmp_path)
    args = ["segment", clip_folder / "clip.mp4", "--mask", clip_folder / "mask.png", "--masks-dir", clip_folder]
    args += ["--overwrite", "--model", tiny_model_file, *FAST] + ([] if overlay else ["--no-overlay"])
    assert_clean_failure(run_cli(args), contains="--masks-dir")
    assert listing(tmp_path) == before and digests(tmp_path) == hashes


def test_masks_dir_dot_is_refused(clip_folder, tmp_path, run_cli, tiny_model_file, monkeypatch):
    monkeypatch.chdir(clip_folder)
    before, hashes = listing(tmp_path), digests(tmp_path)
    args = ["segment", "clip.mp4", "--mask", "mask.png", "--masks-dir", ".", "--overwrite", "--no-overlay"]
    assert_clean_failure(run_cli([*args, "--model", tiny_model_file, *FAST]), contains="--masks-dir")
    assert listing(tmp_path) == before and digests(tmp_path) == hashes


def test_masks_dir_with_other_files_does_not_suggest_overwrite(clip_folder, tmp_path, run_cli, tiny_model_file):
    before = listing(tmp_path)
    args = ["segment", clip_folder / "clip.mp4", "--mask", clip_folder / "mask.png", "--masks-dir", clip_folder]
    message = assert_clean_failure(run_cli([*args, "--no-overlay", "--model", tiny_model_file, *FAST]))
    assert "--overwrite" not in message.replace("with or without --overwrite", "")
    assert listing(tmp_path) == before


def test_two_outputs_on_one_path_are_refused(clip_folder, tmp_path, run_cli, tiny_model_file):
    before = listing(tmp_path)
    same = tmp_path / "same.mp4"
    args = ["segment", clip_folder / "clip.mp4", "--mask", clip_folder / "mask.png", "-o", same, "--mask-video", same]
    assert_clean_failure(run_cli([*args, "--model", tiny_model_file, *FAST]), contains="--mask-video")
    assert listing(tmp_path) == before


def test_transparent_background_of_an_rgba_mask_is_background(clip_folder, tmp_path, run_cli, tiny_model_file):
    """Object in red, background white but fully transparent: what image editors export."""
    drawn = bear_mask() > 0
    rgba = np.zeros((*drawn.shape, 4), dtype=np.uint8)
    rgba[~drawn] = (255, 255, 255, 0)
    rgba[drawn] = (255, 0, 0, 255)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    args = ["segment", clip_folder / "clip.mp4", "--mask", tmp_path / "rgba.png", "--masks-dir", tmp_path / "m"]
    result = run_cli([*args, "--no-overlay", "--model", tiny_model_file, *FAST])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "m" / "00000.png") as first:
        ids = np.array(first)
    assert np.array_equal(ids > 0, drawn), "the first frame's output is the drawn object"
    assert set(np.unique(ids).tolist()) == {0, 1}
