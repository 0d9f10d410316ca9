"""engine.datasets, the one reader of dataset layouts: frame numbers, sparse folders, DAVIS, YouTube-VOS, videos."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.datasets import annotation_frames, frame_number, list_videos, sparse_annotations
from engine.errors import VosError

ROOT = Path(__file__).resolve().parents[1]


def png(path: Path, value: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 6), value, np.uint8), mode="L").save(path)
    return path


def test_frame_number_is_the_last_run_of_digits():
    assert frame_number("00045.png") == 45
    assert frame_number("frame_000045.png") == 45
    assert frame_number("cam2_frame_7.png") == 7
    assert frame_number("mask.png") is None


def test_sparse_annotations_by_number_and_their_errors(tmp_path):
    png(tmp_path / "a" / "00003.png")
    png(tmp_path / "a" / "frame_000010.png")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    assert {k: p.name for k, p in sparse_annotations(tmp_path / "a").items()} == {
        3: "00003.png",
        10: "frame_000010.png",
    }
    png(tmp_path / "b" / "00003.png")
    png(tmp_path / "b" / "frame_3.png")
    with pytest.raises(VosError, match="Two annotations for frame 3"):
        sparse_annotations(tmp_path / "b")
    png(tmp_path / "c" / "mask.png")
    with pytest.raises(VosError, match="no frame number"):
        sparse_annotations(tmp_path / "c")


def test_youtube_vos_layout_pairs_annotations_with_frame_files_every_fifth_frame(tmp_path):
    for number in (0, 5, 10, 15):
        png(tmp_path / "JPEGImages" / "clip" / f"{number:05d}.jpg")
    png(tmp_path / "Annotations" / "clip" / "00000.png")
    png(tmp_path / "Annotations" / "clip" / "00010.png", 2)
    png(tmp_path / "JPEGImages" / "other" / "00000.jpg")
    entries = list_videos(tmp_path)
    assert [e.name for e in entries] == ["clip", "other"]
    assert {k: p.name for k, p in annotation_frames(entries[0]).items()} == {0: "00000.png", 2: "00010.png"}
    with pytest.raises(VosError, match="no annotation"):
        annotation_frames(entries[1])


def test_folder_of_videos_with_a_first_frame_mask_or_a_sparse_folder(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    png(tmp_path / "a.png")
    (tmp_path / "b.mp4").write_bytes(b"")
    png(tmp_path / "b" / "00000.png")
    png(tmp_path / "b" / "00012.png")
    entries = {e.name: e for e in list_videos(tmp_path)}
    assert list(annotation_frames(entries["a"])) == [0]
    assert list(annotation_frames(entries["b"])) == [0, 12]
    with pytest.raises(VosError, match="No videos"):
        list_videos(tmp_path / "b")


def test_layers_only_point_down():
    """engine imports neither trainer nor vosctl; trainer never imports vosctl."""
    forbidden = {"engine": ("trainer", "vosctl"), "trainer": ("vosctl",)}
    for package, banned in forbidden.items():
        for path in (ROOT / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
