"""Validation on held-back sequences, through the engine's own session (as ``vosctl segment`` runs).

Each sequence is segmented from its first mask with :func:`engine.segment.segment_video`; J (and,
when asked, the boundary measure F) is computed per object and per frame, leaving out the first
frame (the input) and the last, as the DAVIS evaluation does, and averaged over frames and objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.config import SessionConfig
from engine.datasets import read_annotation
from engine.metrics import f_measure, jaccard
from engine.model import EmbeddingModel
from engine.segment import segment_video
from trainer.data import VOID_ID, Sequence, load_sequence


def _frames(seq: Sequence) -> Iterator[np.ndarray]:
    for path in seq.frames:
        with Image.open(path) as image:
            yield np.array(image.convert("RGB"))


def score_sequence(
    model: EmbeddingModel,
    seq: Sequence,
    *,
    config: SessionConfig,
    device: torch.device | str = "cpu",
    with_f: bool = False,
) -> dict[str, float]:
    """{"J": mean J, "F": mean F (with_f), "frames": scored frames} of one sequence."""
    first = read_annotation(seq.masks[0])
    objects = [int(i) for i in np.unique(first) if i not in (0, VOID_ID)]
    last = len(seq.frames) - 1
    j_values: list[float] = []
    f_values: list[float] = []
    for index, pred in enumerate(segment_video(model, _frames(seq), first, config=config, device=device)):
        if index == 0 or index == last:
            continue
        gt = read_annotation(seq.masks[index])
        for obj in objects:
            j_values.append(jaccard(pred == obj, gt == obj))
            if with_f:
                f_values.append(f_measure(pred == obj, gt == obj))
    result = {"J": float(np.mean(j_values)) if j_values else float("nan"), "frames": max(0, last - 1)}
    if with_f:
        result["F"] = float(np.mean(f_values)) if f_values else float("nan")
    return result


def evaluate_sequences(
    model: EmbeddingModel,
    root: Path,
    names: list[str],
    *,
    config: SessionConfig,
    device: torch.device | str = "cpu",
    with_f: bool = False,
) -> dict[str, dict[str, float]]:
    """Per-sequence scores. Leaves the model in eval mode; a training loop switches it back."""
    model.eval()
    return {
        name: score_sequence(model, load_sequence(root, name), config=config, device=device, with_f=with_f)
        for name in names
    }


def mean_score(results: dict[str, dict[str, float]], key: str = "J") -> float:
    """Plain mean over sequences, as the DAVIS tables report it."""
    values = [r[key] for r in results.values() if key in r and not np.isnan(r[key])]
    return float(np.mean(values)) if values else float("nan")
