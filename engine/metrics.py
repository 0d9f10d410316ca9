"""DAVIS region (J) and boundary (F) measures, scored as the official DAVIS evaluation does.

The reference is ``davis2017-evaluation`` (``davis2017/metrics.py`` and ``davis2017/utils.py``),
whose semi-supervised protocol is also the one used for DAVIS 2016 leaderboards today:

* J is the Jaccard index of the foreground, 1 when both masks are empty (``db_eval_iou``);
* F is the boundary F-measure (``db_eval_boundary``/``f_measure``): one-pixel boundaries from
  :func:`seg2bmap`, each dilated by a disk of radius ``ceil(0.008 * image diagonal)`` (8 px at
  854x480), precision/recall of matched boundary pixels. There is no thinning step: neither the
  DAVIS 2016 python toolkit nor davis2017-evaluation thins the boundary maps;
* per-sequence statistics Mean / Recall / Decay follow ``db_statistics``.

Everything here is pure numpy/OpenCV on in-memory arrays; file handling lives in ``vosctl``.
Masks are ``(H, W)`` arrays of any dtype; any non-zero pixel is foreground.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import cv2
import numpy as np

from engine.errors import VosError

#: Boundary tolerance of the official evaluation, as a fraction of the image diagonal.
BOUND_TH = 0.008

#: Per-sequence statistics, in the order the official tables list them.
STAT_KEYS = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise VosError(
            f"A predicted mask of shape {pred.shape} cannot be scored against a ground truth "
            f"of shape {gt.shape}: both must be (H, W) and equal."
        )


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J: intersection over union of the foregrounds.

    Args:
        pred: ``(H, W)`` predicted mask, non-zero = foreground.
        gt: ``(H, W)`` ground-truth mask, non-zero = foreground.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty, as official ``db_eval_iou``.
    """
    _check_pair(pred, gt)
    p = pred.astype(bool)
    g = gt.astype(bool)
    inter = np.count_nonzero(p & g)
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(inter / union)


def seg2bmap(seg: np.ndarray, width: int | None = None, height: int | None = None) -> np.ndarray:
    """One-pixel-wide boundary map of a segmentation (David Martin's ``seg2bmap``, as in DAVIS).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour
    (neighbours beyond the image count as background), so boundaries sit half a pixel towards the
    origin. The last row compares with the east neighbour only, the last column with the south
    neighbour only, and the bottom-right pixel is never a boundary: the image border itself is
    therefore not a boundary, and a mask covering the whole image has none.

    Args:
        seg: ``(H, W)`` segmentation, non-zero = foreground.
        width: width of the wanted map (default ``W``); see the note below.
        height: height of the wanted map (default ``H``).

    Returns:
        ``(H, W)`` bool boundary map; ``(height, width)`` float map when a size is asked for.

    Note:
        The resizing branch copies the official formula (which scales columns by ``width / H``);
        the evaluation never uses it.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise VosError(f"seg2bmap needs a (H, W) mask, not one of shape {seg.shape}.")
    h, w = seg.shape
    width = w if width is None else width
    height = h if height is None else height
    if width > w or height > h or abs(width / height - w / h) > 0.01:
        raise VosError(f"A {w}x{h} segmentation cannot be converted to a {width}x{height} boundary map.")

    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]

    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False

    if w == width and h == height:
        return b
    bmap = np.zeros((height, width))
    ys, xs = np.nonzero(b)
    rows = 1 + np.floor((ys - 1) + height / h).astype(np.int64)
    cols = 1 + np.floor((xs - 1) + width / h).astype(np.int64)
    bmap[rows, cols] = 1
    return bmap


@lru_cache(maxsize=16)
def _disk_cached(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    out = ((x**2 + y**2) <= radius**2).astype(np.uint8)
    out.flags.writeable = False
    return out


def disk(radius: int) -> np.ndarray:
    """Flat disk footprint, identical to ``skimage.morphology.disk(radius)`` (strict radius).

    Returns:
        ``(2r+1, 2r+1)`` uint8 array, 1 where ``x**2 + y**2 <= r**2``.
    """
    if radius < 0:
        raise VosError(f"A disk needs a non-negative radius, not {radius}.")
    return _disk_cached(int(radius))


def boundary_radius(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Boundary tolerance in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th * diagonal)``."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise VosError(f"A boundary tolerance of {bound_th} pixels must be a whole number.")
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape)))


def boundary_precision_recall(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> tuple[float, float]:
    """Boundary precision and recall, with the official conventions for missing boundaries.

    Args:
        pred: ``(H, W)`` predicted mask, non-zero = foreground.
        gt: ``(H, W)`` ground-truth mask, non-zero = foreground.
        bound_th: tolerance, a fraction of the image diagonal (< 1) or pixels (>= 1).

    Returns:
        ``(precision, recall)``. No predicted boundary but some in the ground truth gives (1, 0);
        the reverse gives (0, 1); neither side having a boundary gives (1, 1).
    """
    _check_pair(pred, gt)
    footprint = disk(boundary_radius(pred.shape, bound_th))
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    # cv2.dilate pads with background like skimage's binary_dilation, and the disk is symmetric,
    # so this equals the binary_dilation of the DAVIS 2016 toolkit and the cv2 call of davis2017.
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), footprint).astype(bool)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), footprint).astype(bool)

    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt > 0:
        return 1.0, 0.0
    if n_fg > 0 and n_gt == 0:
        return 0.0, 1.0
    if n_fg == 0 and n_gt == 0:
        return 1.0, 1.0
    precision = np.count_nonzero(fg_boundary & gt_dil) / float(n_fg)
    recall = np.count_nonzero(gt_boundary & fg_dil) / float(n_gt)
    return float(precision), float(recall)


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary accuracy F = 2PR / (P + R) (0 when P + R == 0), as official ``db_eval_boundary``.

    Args:
        pred: ``(H, W)`` predicted mask, non-zero = foreground.
        gt: ``(H, W)`` ground-truth mask, non-zero = foreground.
        bound_th: tolerance, a fraction of the image diagonal (< 1) or pixels (>= 1).

    Returns:
        F in [0, 1].
    """
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The four overlapping ``[start, stop)`` frame ranges of the official Decay.

    ``ids = round(linspace(1, n, 5) + 1e-10) - 1``; the 1e-10 turns numpy's round-half-to-even
    into round-half-up, like MATLAB's ``round`` of the original toolkit. Bin ``i`` is
    ``values[ids[i] : ids[i+1] + 1]``, so neighbouring bins share their edge frame.

    Note:
        The official code casts ``ids`` to uint8, which overflows from n = 256 frames on (no DAVIS
        sequence is that long); plain integers are used here, giving identical bins for n <= 255.
    """
    ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    return [(int(ids[i]), int(ids[i + 1]) + 1) for i in range(4)]


def sequence_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, Recall and Decay of one sequence's per-frame scores, as official ``db_statistics``.

    Args:
        values: ``(N,)`` per-frame J or F. The caller passes every frame except the first (given
            as input in the semi-supervised task) and the last, as the official evaluation does.

    Returns:
        ``{"mean", "recall", "decay"}``: the NaN-ignoring mean; the fraction of frames scoring
        above 0.5 (a NaN frame counts as a miss, as in the official ``nanmean(values > 0.5)``);
        the mean of the first quarter bin minus that of the last (NaN-ignoring). All three are
        NaN for an empty sequence.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return {"mean": math.nan, "recall": math.nan, "decay": math.nan}
    bins = [values[a:b] for a, b in decay_bins(values.size)]
    with warnings.catch_warnings():
        # nanmean of an all-NaN slice is NaN, which is the wanted answer, not a problem.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.mean(values > 0.5)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return {"mean": float(mean), "recall": float(recall), "decay": float(decay)}


def dataset_summary(per_sequence: dict[str, dict]) -> dict[str, float]:
    """Dataset figures: each statistic averaged over sequences (one object per DAVIS 2016 sequence).

    Args:
        per_sequence: name -> dict holding at least the keys of :data:`STAT_KEYS`.

    Returns:
        ``J_mean, J_recall, J_decay, F_mean, F_recall, F_decay`` (plain means over sequences, as
        the official ``np.mean``) and ``JF_mean = (J_mean + F_mean) / 2``.
    """
    if not per_sequence:
        raise VosError("There are no scored sequences to summarise.")
    out: dict[str, float] = {}
    for key in STAT_KEYS:
        try:
            column = [float(seq[key]) for seq in per_sequence.values()]
        except KeyError as exc:
            raise VosError(f"A scored sequence lacks the figure {exc.args[0]!r}.") from None
        out[key] = float(np.mean(column))
    out["JF_mean"] = (out["J_mean"] + out["F_mean"]) / 2
    return out
