"""DAVIS J/F measures, statistics, dataset reading and results scoring.

Expected values are worked out by hand in the comments; the end-to-end tests use two real DAVIS
2016 sequences from ../shared/data/davis2016-train through a temporary DAVIS-layout root.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.datasets import read_annotation, read_split, sequence_annotations, sequence_frames
from engine.errors import VosError
from engine.metrics import (
    boundary_precision_recall,
    boundary_radius,
    dataset_summary,
    decay_bins,
    disk,
    f_measure,
    jaccard,
    seg2bmap,
    sequence_stats,
)
from vosctl.evaluate import SequenceScorer, score_results, score_sequence, summary_table, write_report

DAVIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis2016-train"
SEQS = ("bear", "boat")


def square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


# --- J -----------------------------------------------------------------------------------------


def test_jaccard_of_squares_shifted_by_half_their_side():
    a = square((30, 30), 5, 5, 10)
    b = square((30, 30), 5, 10, 10)
    assert jaccard(a, b) == pytest.approx(50 / 150)  # overlap 10x5, union 100 + 100 - 50


def test_jaccard_empty_conventions():
    empty = np.zeros((8, 8), np.uint8)
    assert jaccard(empty, empty) == 1.0
    assert jaccard(empty, square((8, 8), 0, 0, 2)) == 0.0


def test_shape_mismatch_is_a_vos_error():
    with pytest.raises(VosError, match="shape"):
        jaccard(np.zeros((4, 4)), np.zeros((4, 5)))


# --- boundaries --------------------------------------------------------------------------------


def test_seg2bmap_marks_pixels_differing_from_east_south_or_southeast():
    seg = np.zeros((5, 5), np.uint8)
    seg[1:3, 1:3] = 7  # any non-zero id is foreground
    expected = np.array(
        [
            [1, 1, 1, 0, 0],  # (0,0) differs from its SE neighbour, (0,1) and (0,2) from S
            [1, 0, 1, 0, 0],  # (1,1) is inside; (1,2) differs from E
            [1, 1, 1, 0, 0],  # (2,1) and (2,2) differ from S
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    assert np.array_equal(seg2bmap(seg), expected)


def test_seg2bmap_last_row_and_column_compare_along_the_border_only():
    seg = np.zeros((3, 3), bool)
    seg[1:, 1:] = True
    # Last column: only the S neighbour counts; last row: only E; the corner never. So the
    # object's edges on the image border are not boundaries.
    expected = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0]], bool)
    assert np.array_equal(seg2bmap(seg), expected)
    assert not seg2bmap(np.ones((6, 9), bool)).any()


def test_disk_matches_skimage_definition():
    assert np.array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert np.array_equal(
        disk(2), [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    )


def test_boundary_radius():
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_radius((100, 100)) == 2  # ceil(0.008 * 141.4)
    assert boundary_radius((100, 100), 3) == 3


def test_f_identical_masks_is_one():
    gt = square((40, 50), 10, 12, 15)
    assert f_measure(gt, gt.copy()) == 1.0


def test_f_shift_within_tolerance_is_one_and_beyond_is_not():
    gt = square((100, 100), 40, 40, 20)  # tolerance ceil(0.008 * 141.4) = 2 px
    assert f_measure(np.roll(gt, 2, axis=1), gt) == 1.0
    assert f_measure(np.roll(gt, 3, axis=1), gt) < 1.0


def test_f_hand_counted_shift_beyond_tolerance():
    # 5x5 squares; each boundary is the 20-pixel ring of the 6x6 square one pixel up-left
    # (rows 4..9). gt ring: cols 4..9; pred ring: cols 7..12. With a 1-pixel cross tolerance a
    # gt ring pixel matches on its top/bottom rows at cols 6..9 (4 + 4) and on its right column
    # at rows 5 and 8 (next to pred's top/bottom rows): 10 of 20. Pred is the mirror image.
    gt = square((20, 20), 5, 5, 5)
    pred = square((20, 20), 5, 8, 5)
    assert int(seg2bmap(gt).sum()) == 20
    assert boundary_precision_recall(pred, gt, bound_th=1) == (0.5, 0.5)
    assert f_measure(pred, gt, bound_th=1) == pytest.approx(0.5)


def test_f_official_conventions_for_missing_boundaries():
    gt = square((30, 30), 5, 5, 10)
    empty = np.zeros_like(gt)
    assert boundary_precision_recall(empty, gt) == (1.0, 0.0)
    assert boundary_precision_recall(gt, empty) == (0.0, 1.0)
    assert boundary_precision_recall(empty, empty) == (1.0, 1.0)
    assert f_measure(empty, gt) == 0.0 and f_measure(gt, empty) == 0.0 and f_measure(empty, empty) == 1.0
    # A full-frame mask has no boundary either (see seg2bmap), as in the official code.
    assert f_measure(np.ones_like(gt), empty) == 1.0


# --- statistics --------------------------------------------------------------------------------


def test_statistics_worked_example_ten_frames():
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    # linspace(1, 10, 5) = 1, 3.25, 5.5, 7.75, 10 -> ids 0, 2, 5, 7, 9
    assert decay_bins(10) == [(0, 3), (2, 6), (5, 8), (7, 10)]
    stats = sequence_stats(v)
    assert stats["mean"] == pytest.approx(0.55)
    assert stats["recall"] == pytest.approx(0.5)  # 0.5 itself is not above 0.5
    assert stats["decay"] == pytest.approx(0.9 - 0.2)  # mean(v[0:3]) - mean(v[7:10])


def test_decay_rounds_halves_up_like_the_official_epsilon():
    # linspace(1, 7, 5) = 1, 2.5, 4, 5.5, 7: with +1e-10 -> 1, 3, 4, 6, 7 (numpy's plain round
    # would give 2 and 6), so ids = 0, 2, 3, 5, 6 and the first bin is v[0:3].
    v = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.4, 0.3])
    assert decay_bins(7) == [(0, 3), (2, 4), (3, 6), (5, 7)]
    stats = sequence_stats(v)
    assert stats["decay"] == pytest.approx((0.9 + 0.8 + 0.2) / 3 - (0.4 + 0.3) / 2)
    assert stats["recall"] == pytest.approx(4 / 7)


def test_statistics_nan_handling_and_empty():
    stats = sequence_stats(np.array([math.nan, 1.0, 1.0, 0.0]))
    assert stats["mean"] == pytest.approx(2 / 3)  # NaN ignored
    assert stats["recall"] == pytest.approx(0.5)  # NaN counts as a miss
    assert all(math.isnan(x) for x in sequence_stats(np.array([])).values())


def test_dataset_summary_means_over_sequences():
    a = dict(J_mean=0.8, J_recall=1.0, J_decay=0.1, F_mean=0.6, F_recall=0.5, F_decay=0.2)
    b = dict(J_mean=0.6, J_recall=0.5, J_decay=0.3, F_mean=0.4, F_recall=0.0, F_decay=0.0)
    s = dataset_summary({"a": a, "b": b})
    assert s["J_mean"] == pytest.approx(0.7) and s["F_recall"] == pytest.approx(0.25)
    assert s["JF_mean"] == pytest.approx((0.7 + 0.5) / 2)
    with pytest.raises(VosError):
        dataset_summary({})


def test_score_sequence_drops_first_and_last_frame():
    gt = [square((20, 20), 4, 4, 8)] * 6
    pred = [np.zeros((20, 20), bool)] + gt[1:5] + [np.zeros((20, 20), bool)]
    result = score_sequence(gt, pred)
    assert result["frames"] == 4 and result["J"] == [1.0] * 4
    assert result["J_mean"] == 1.0 and result["F_mean"] == 1.0
    scorer = SequenceScorer()
    for g, p in zip(gt, pred, strict=True):
        scorer.add(g, p)
    assert scorer.result() == result


# --- dataset layout and end to end -------------------------------------------------------------

needs_davis = pytest.mark.skipif(not DAVIS.is_dir(), reason="shared DAVIS 2016 training data not present")


@pytest.fixture
def davis_root(tmp_path: Path) -> Path:
    root = tmp_path / "davis"
    for sub in ("JPEGImages", "Annotations"):
        (root / sub / "480p").mkdir(parents=True)
        for seq in SEQS:
            (root / sub / "480p" / seq).symlink_to(DAVIS / sub / "480p" / seq)
    lines = [
        line
        for line in (DAVIS / "ImageSets" / "480p" / "train.txt").read_text().splitlines()
        if any(f"/{seq}/" in line for seq in SEQS)
    ]
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "mini.txt").write_text("\n".join(lines) + "\n")
    return root


@needs_davis
def test_dataset_reading(davis_root: Path, tmp_path: Path):
    assert read_split(davis_root, "mini") == list(SEQS)
    assert len(sequence_frames(davis_root, "boat")) == len(sequence_annotations(davis_root, "boat")) == 75
    mask = read_annotation(sequence_annotations(davis_root, "bear")[77])  # an LA-mode PNG
    assert mask.dtype == np.uint8 and mask.shape == (480, 854) and set(np.unique(mask)) == {0, 1}
    (davis_root / "ImageSets" / "2016").mkdir()
    (davis_root / "ImageSets" / "2016" / "v17.txt").write_text("boat\nbear\nboat\n")
    assert read_split(davis_root, "v17") == ["boat", "bear"]
    with pytest.raises(VosError, match="'nosuch' split"):
        read_split(davis_root, "nosuch")
    with pytest.raises(VosError, match="'ghost' has no frames"):
        sequence_frames(davis_root, "ghost")


def test_read_annotation_palette_and_grey(tmp_path: Path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    img = Image.new("P", (2, 2))
    img.putdata(ids.reshape(-1).tolist())
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
    img.save(tmp_path / "p.png")
    assert np.array_equal(read_annotation(tmp_path / "p.png"), ids)  # indices, not colours
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "g.png")
    assert np.array_equal(read_annotation(tmp_path / "g.png"), [[0, 1]])
    with pytest.raises(VosError, match="does not exist"):
        read_annotation(tmp_path / "missing.png")


@needs_davis
def test_score_results_ground_truth_is_perfect(davis_root: Path, tmp_path: Path):
    results = tmp_path / "gt_results"
    results.mkdir()
    for seq in SEQS:
        (results / seq).symlink_to(DAVIS / "Annotations" / "480p" / seq)
    summary = score_results(data=davis_root, split="mini", results=results)
    assert list(summary["sequences"]) == list(SEQS)
    assert summary["sequences"]["boat"]["frames"] == 73  # 75 frames less the first and last
    for key in ("J_mean", "J_recall", "F_mean", "F_recall", "JF_mean"):
        assert summary[key] == 1.0
    assert summary["J_decay"] == 0.0 and summary["F_decay"] == 0.0

    out = tmp_path / "report"
    write_report(summary, out)
    report = json.loads((out / "results.json").read_text())
    assert report["JF_mean"] == 1.0 and report["seconds_per_frame"] is None
    assert report["sequences"]["bear"]["J_mean"] == 1.0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("sequence,frames,J_mean") and rows[-1].startswith("mean,153,1.000000")
    chart = cv2.imread(str(out / "results.png"))
    assert chart is not None and chart.shape[1] >= 1000
    assert not list(out.glob(".*tmp"))
    assert summary_table(summary).row_count == 3


@needs_davis
def test_score_results_eroded_masks_and_missing_files(davis_root: Path, tmp_path: Path):
    results = tmp_path / "eroded"
    kernel = np.ones((9, 9), np.uint8)
    for seq in SEQS:
        (results / seq).mkdir(parents=True)
        for ann in sequence_annotations(davis_root, seq)[1:-1]:  # first/last are never read
            eroded = cv2.erode(read_annotation(ann), kernel)
            cv2.imwrite(str(results / seq / ann.name), eroded * 255)
    one = score_results(data=davis_root, split="mini", results=results)
    assert 0.5 < one["J_mean"] < 1.0 and one["F_mean"] < 1.0
    two = score_results(data=davis_root, split="mini", results=results, nproc=2)
    assert two == one

    (results / "boat" / "00010.png").unlink()
    with pytest.raises(VosError, match=r"'boat' lack frame 00010\.png"):
        score_results(data=davis_root, split="mini", results=results)
    for f in (results / "bear").iterdir():
        f.unlink()
    (results / "bear").rmdir()
    with pytest.raises(VosError, match="no folder for sequence 'bear'"):
        score_results(data=davis_root, split="mini", results=results)


# --- optional cross-check against vos-benchmark (a copy of davis2017-evaluation's F) ------------


def test_cross_check_with_vos_benchmark():
    evaluator_mod = pytest.importorskip("vos_benchmark.evaluator")
    utils_mod = pytest.importorskip("vos_benchmark.utils")
    rng = np.random.default_rng(0)
    for t in range(12):
        h, w = (480, 854) if t < 2 else tuple(int(x) for x in rng.integers(20, 120, 2))
        gt = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 3 + t) > 0.5
        pred = np.roll(gt, tuple(int(x) for x in rng.integers(-6, 7, 2)), (0, 1)) ^ (rng.random((h, w)) < 0.01)
        assert np.array_equal(seg2bmap(pred), utils_mod._seg2bmap(pred))
        ev = evaluator_mod.Evaluator()
        ev.feed_frame(pred.astype(np.uint8), gt.astype(np.uint8))
        assert abs(ev.object_iou[1][0] - jaccard(pred, gt)) < 1e-6
        assert abs(ev.boundary_f[1][0] - f_measure(pred, gt)) < 1e-6
