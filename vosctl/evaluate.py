"""DAVIS 2016 scoring of predicted masks, and the report files (JSON, CSV, chart) and table.

Protocol (official semi-supervised DAVIS evaluation): one binary object per sequence (any non-zero
id is foreground); the first frame (given as input) and the last frame are not scored; per
sequence J and F Mean / Recall / Decay come from :func:`engine.metrics.sequence_stats` and the
dataset figures are plain means over sequences. All figures are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from rich.table import Table

from engine.datasets import read_annotation, read_split, sequence_annotations
from engine.errors import VosError
from engine.files import write_atomic
from engine.metrics import BOUND_TH, STAT_KEYS, dataset_summary, f_measure, jaccard, sequence_stats

SEQUENCE_KEYS = (*STAT_KEYS, "JF_mean")


def sequence_result(j_values: list[float], f_values: list[float]) -> dict:
    """Per-sequence figures from the per-frame scores of the scored frames.

    Returns:
        ``J_mean, J_recall, J_decay, F_mean, F_recall, F_decay, JF_mean``, ``frames`` (number of
        scored frames) and the per-frame lists ``J`` and ``F``.
    """
    js = sequence_stats(np.asarray(j_values, dtype=np.float64))
    fs = sequence_stats(np.asarray(f_values, dtype=np.float64))
    out: dict = {"frames": len(j_values)}
    for name, stats in (("J", js), ("F", fs)):
        out[f"{name}_mean"] = stats["mean"]
        out[f"{name}_recall"] = stats["recall"]
        out[f"{name}_decay"] = stats["decay"]
    out["JF_mean"] = (out["J_mean"] + out["F_mean"]) / 2
    out["J"] = [float(v) for v in j_values]
    out["F"] = [float(v) for v in f_values]
    return out


class SequenceScorer:
    """Scores a sequence frame by frame, so masks need not all be held in memory.

    Call :meth:`add` for every frame in order, the first (annotated) frame included, then
    :meth:`result`. The first and the last frame are left out of the scores, as in the official
    evaluation; only the latest frame is kept until the next one arrives.
    """

    def __init__(self, bound_th: float = BOUND_TH) -> None:
        self._bound_th = bound_th
        self._count = 0
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._j: list[float] = []
        self._f: list[float] = []

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add frame ``t``: ``gt`` and ``pred`` are ``(H, W)`` masks, non-zero = foreground."""
        if gt.ndim != 2 or gt.shape != pred.shape:
            raise VosError(
                f"Frame {self._count} has a prediction of shape {pred.shape} and a ground truth of "
                f"shape {gt.shape}: both must be (H, W) and equal."
            )
        if self._pending is not None:
            self._score(*self._pending)
        # Copies, because a caller may reuse its buffers for the next frame.
        self._pending = (gt.astype(bool), pred.astype(bool)) if self._count > 0 else None
        self._count += 1

    def _score(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self._j.append(jaccard(pred, gt))
        self._f.append(f_measure(pred, gt, self._bound_th))

    def result(self) -> dict:
        """Figures of the frames added so far, last one excluded (see :func:`sequence_result`)."""
        return sequence_result(self._j, self._f)


def score_sequence(gt_masks: list[np.ndarray], pred_masks: list[np.ndarray]) -> dict:
    """Score a whole sequence: lists of ``(H, W)`` masks for every frame, first frame included.

    Returns:
        The :func:`sequence_result` dict; frames 0 and N-1 are not scored.
    """
    if len(gt_masks) != len(pred_masks):
        raise VosError(f"A sequence has {len(gt_masks)} ground-truth masks but {len(pred_masks)} predictions.")
    scorer = SequenceScorer()
    for gt, pred in zip(gt_masks, pred_masks, strict=True):
        scorer.add(gt, pred)
    return scorer.result()


def _result_paths(data: Path, results: Path, seq: str) -> list[tuple[Path, Path]]:
    # Only the scored frames (all but the first and last) must exist, as in the official
    # evaluation, which never reads the other two.
    annotations = sequence_annotations(data, seq)[1:-1]
    folder = results / seq
    if not folder.is_dir():
        raise VosError(f"The results folder {results} has no folder for sequence '{seq}'.")
    pairs = []
    for ann in annotations:
        pred = folder / ann.name
        if not pred.is_file():
            raise VosError(f"The results of sequence '{seq}' lack frame {ann.name} ({pred} is missing).")
        pairs.append((ann, pred))
    return pairs


def _score_saved(pairs: list[tuple[Path, Path]]) -> dict:
    j_values, f_values = [], []
    for ann, pred_path in pairs:
        gt = read_annotation(ann)
        pred = read_annotation(pred_path)
        if gt.shape != pred.shape:
            raise VosError(
                f"The mask {pred_path} is {pred.shape[1]}x{pred.shape[0]} pixels but its annotation "
                f"is {gt.shape[1]}x{gt.shape[0]}."
            )
        j_values.append(jaccard(pred, gt))
        f_values.append(f_measure(pred, gt))
    return sequence_result(j_values, f_values)


def score_results(*, data: Path, split: str, results: Path, nproc: int = 1) -> dict:
    """Score a DAVIS results folder (``results/<seq>/<nnnnn>.png``) against a split's annotations.

    Args:
        data: DAVIS root. split: split name. results: folder of predicted masks, named as the
            annotations. nproc: worker processes (sequences are independent; the result is the same).

    Returns:
        The :func:`make_summary` dict, ``seconds_per_frame`` and ``fps`` being None.
    """
    if nproc < 1:
        raise VosError(f"The number of processes must be at least 1, not {nproc}.")
    data, results = Path(data), Path(results)
    if not results.is_dir():
        raise VosError(f"The results folder {results} does not exist.")
    sequences = read_split(data, split)
    # Check every file first, so a missing one is reported before minutes of scoring.
    jobs = [_result_paths(data, results, seq) for seq in sequences]
    if nproc == 1 or len(jobs) == 1:
        scored = [_score_saved(pairs) for pairs in jobs]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(nproc, len(jobs)), mp_context=context) as pool:
            scored = list(pool.map(_score_saved, jobs))
    return make_summary(dict(zip(sequences, scored, strict=True)))


def make_summary(per_sequence: dict[str, dict], *, seconds_per_frame: float | None = None) -> dict:
    """Dataset figures (:func:`engine.metrics.dataset_summary`) plus timing and the sequences."""
    summary: dict = dict(dataset_summary(per_sequence))
    summary["seconds_per_frame"] = seconds_per_frame
    summary["fps"] = 1.0 / seconds_per_frame if seconds_per_frame else None
    summary["sequences"] = per_sequence
    return summary


def _finite(value: object) -> object:
    # JSON has no NaN; a sequence too short to score gets null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _report_json(summary: dict) -> bytes:
    # One line per sequence keeps the per-frame lists from taking a line per number.
    lines = ["{"]
    for key in (*STAT_KEYS, "JF_mean", "seconds_per_frame", "fps"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(_finite(summary[key]), allow_nan=False)},")
    lines.append('  "sequences": {')
    entries = []
    for name, seq in summary["sequences"].items():
        figures = {key: seq[key] for key in ("frames", *SEQUENCE_KEYS, "J", "F") if key in seq}
        entries.append(f"    {json.dumps(name)}: {json.dumps(_finite(figures), allow_nan=False)}")
    lines.append(",\n".join(entries))
    lines += ["  }", "}", ""]
    return "\n".join(lines).encode()


def _report_csv(summary: dict) -> bytes:
    def cell(value: float) -> str:
        return "" if value is None or not math.isfinite(value) else f"{value:.6f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sequence", "frames", *SEQUENCE_KEYS])
    total = 0
    for name, seq in summary["sequences"].items():
        total += int(seq.get("frames", 0))
        writer.writerow([name, seq.get("frames", ""), *(cell(seq[k]) for k in SEQUENCE_KEYS)])
    writer.writerow(["mean", total, *(cell(summary[k]) for k in SEQUENCE_KEYS)])
    return buffer.getvalue().encode()


def write_report(summary: dict, out: Path) -> None:
    """Write ``results.json``, ``results.csv`` and ``results.png`` into the folder ``out``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    ``summary`` is a :func:`make_summary` dict (figures as fractions).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_bytes(out / "results.json", _report_json(summary))
        _write_bytes(out / "results.csv", _report_csv(summary))
        ok, png = cv2.imencode(".png", render_chart(summary))
        if not ok:
            raise OSError("PNG encoding failed")
        _write_bytes(out / "results.png", png.tobytes())
    except OSError as exc:
        raise VosError(f"The report cannot be written to {out}: {exc}.") from None


# --- chart (OpenCV only) ---------------------------------------------------------------------

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_GRID = (225, 225, 225)
_J_COLOUR = (180, 119, 31)  # BGR of the usual blue
_F_COLOUR = (14, 127, 255)  # BGR of the usual orange


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.45, colour=_INK, bold=1) -> None:
    cv2.putText(img, text, org, _FONT, scale, colour, bold, cv2.LINE_AA)


def _vertical_text(img: np.ndarray, text: str, x_centre: int, y_top: int, scale: float = 0.45) -> None:
    # OpenCV cannot draw rotated text: draw it flat, rotate the patch, then paste it.
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    patch = np.full((th + base + 4, tw + 4, 3), 255, np.uint8)
    _text(patch, text, (2, th + 2), scale)
    patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
    h, w = patch.shape[:2]
    x0 = max(0, x_centre - w // 2)
    y1, x1 = min(img.shape[0], y_top + h), min(img.shape[1], x0 + w)
    region = img[y_top:y1, x0:x1]
    np.minimum(region, patch[: y1 - y_top, : x1 - x0], out=region)


def _axes(img: np.ndarray, left: int, top: int, width: int, height: int, ticks: int = 5) -> None:
    for i in range(ticks + 1):
        y = top + height - round(i * height / ticks)
        cv2.line(img, (left, y), (left + width, y), _GRID, 1)
        _text(img, f"{i / ticks:.1f}", (left - 32, y + 4), 0.4)
    cv2.line(img, (left, top), (left, top + height), _INK, 1)
    cv2.line(img, (left, top + height), (left + width, top + height), _INK, 1)


def _hue_colour(i: int, n: int) -> tuple[int, int, int]:
    hsv = np.uint8([[[int(160 * i / max(n, 1)), 200, 200]]])  # stop short of red again
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def render_chart(summary: dict) -> np.ndarray:
    """Draw the report chart: per-sequence J and F bars, then J over normalised time per sequence.

    Returns:
        ``(H, W, 3)`` uint8 BGR image.
    """
    seqs = summary["sequences"]
    names = [*seqs, "MEAN"]
    left, right = 70, 30
    width = max(1000, left + right + 34 * len(names))
    # Few sequences get wider bars rather than a mostly empty panel.
    group = min(90, (width - left - right) // len(names))
    bar = (group - 10) // 2
    label_h = 12 + max(cv2.getTextSize(n, _FONT, 0.45, 1)[0][0] for n in names)
    bar_top, bar_h = 90, 280
    line_top = bar_top + bar_h + label_h + 60
    line_h = 300
    img = np.full((line_top + line_h + 50, width, 3), 255, np.uint8)

    def fig(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"

    _text(img, "DAVIS 2016 evaluation", (left, 32), 0.8, bold=2)
    _text(
        img,
        f"J&F {fig(summary['JF_mean'])}   J mean {fig(summary['J_mean'])}   F mean {fig(summary['F_mean'])}"
        f"   ({len(seqs)} sequences; first and last frames not scored)",
        (left, 60),
        0.5,
    )
    plot_w = width - left - right
    _axes(img, left, bar_top, plot_w, bar_h)
    for k, (colour, label) in enumerate(((_J_COLOUR, "J (region)"), (_F_COLOUR, "F (boundary)"))):
        x = width - right - 250 + 125 * k
        cv2.rectangle(img, (x, bar_top - 24), (x + 12, bar_top - 12), colour, -1)
        _text(img, label, (x + 18, bar_top - 13), 0.45)
    for i, name in enumerate(names):
        rec = summary if name == "MEAN" and i == len(names) - 1 else seqs[name]
        x = left + 4 + i * group
        for k, key in enumerate(("J_mean", "F_mean")):
            v = rec.get(key)
            if v is None or not math.isfinite(v):
                continue
            top = bar_top + bar_h - round(max(0.0, min(1.0, v)) * bar_h)
            colour = _J_COLOUR if k == 0 else _F_COLOUR
            x0 = x + (bar + 2) * k
            cv2.rectangle(img, (x0, top), (x0 + bar, bar_top + bar_h), colour, -1)
        _vertical_text(img, name, x + bar + 1, bar_top + bar_h + 6)

    title = "J per frame over normalised time (0 = second frame, 1 = second-to-last)"
    _text(img, title, (left, line_top - 14), 0.5)
    cols = max(1, math.ceil(len(seqs) / max(1, line_h // 16)))
    legend_w = 140 * cols
    line_w = plot_w - legend_w - 20
    _axes(img, left, line_top, line_w, line_h)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + round(t * line_w)
        _text(img, f"{t:g}", (x - 8, line_top + line_h + 18), 0.4)
    per_col = math.ceil(len(seqs) / cols) if seqs else 1
    for i, (name, rec) in enumerate(seqs.items()):
        colour = _hue_colour(i, len(seqs))
        values = np.nan_to_num(np.asarray(rec.get("J", []), dtype=np.float64), nan=0.0)
        if values.size:
            ts = np.linspace(0.0, 1.0, values.size) if values.size > 1 else np.array([0.5])
            xs = left + np.round(ts * line_w)
            ys = line_top + line_h - np.round(np.clip(values, 0, 1) * line_h)
            pts = np.stack([xs, ys], 1).astype(np.int32)
            if len(pts) > 1:
                cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA)
            else:
                cv2.circle(img, tuple(int(c) for c in pts[0]), 3, colour, -1, cv2.LINE_AA)
        lx = left + line_w + 20 + 140 * (i // per_col)
        ly = line_top + 10 + 16 * (i % per_col)
        cv2.line(img, (lx, ly - 4), (lx + 16, ly - 4), colour, 3)
        _text(img, name[:16], (lx + 22, ly), 0.4)
    return img


def summary_table(summary: dict) -> Table:
    """Rich table of the summary: one row per sequence and a mean row, figures in percent."""
    table = Table(
        title="DAVIS 2016 evaluation",
        caption="Figures in percent (fractions x 100, one decimal); first and last frames not scored.",
    )
    table.add_column("Sequence")
    table.add_column("Frames", justify="right")
    for header in ("J mean", "J recall", "J decay", "F mean", "F recall", "F decay", "J&F"):
        table.add_column(header, justify="right")

    def pct(value: float | None) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"

    seqs = summary["sequences"]
    total = 0
    for i, (name, seq) in enumerate(seqs.items()):
        total += int(seq.get("frames", 0))
        figures = (pct(seq[k]) for k in SEQUENCE_KEYS)
        table.add_row(name, str(seq.get("frames", "")), *figures, end_section=i == len(seqs) - 1)
    table.add_row("Mean", str(total), *(pct(summary[k]) for k in SEQUENCE_KEYS), style="bold")
    return table
