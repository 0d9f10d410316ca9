"""What the values of a mask mean, and what a mask on a later frame does: one rule for the engine's API and the CLI."""

from __future__ import annotations

import numpy as np
import torch


def object_ids(mask: np.ndarray) -> np.ndarray:
    """(H, W) integer mask -> (H, W) uint8 object ids, 0 the background.

    A binary mask, 0 and 255 (how image tools and DAVIS 2016 store one object) or 0 and 1, is one
    object with id 1; any other mask's values are its object ids.
    """
    mask = np.asarray(mask)
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        return (mask > 0).astype(np.uint8)
    return mask.astype(np.uint8)


def merge_annotation(predicted: np.ndarray, given: np.ndarray) -> np.ndarray:
    """A mask given on a frame already being tracked -> the frame's (H, W) uint8 ids.

    The ids the mask holds replace their prediction on that frame (their predicted pixels outside
    the mask become background); objects the mask does not mention keep their predicted pixels,
    except where the mask paints another object over them.
    """
    present = [int(i) for i in np.unique(given) if i != 0]
    merged = np.where(np.isin(predicted, present), 0, predicted).astype(np.uint8)
    return np.where(given > 0, given, merged).astype(np.uint8)


def mask_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The bounding box of ``mask``'s pixels widened by ``margin`` and clipped to the mask, as
    (rows, columns) slices; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)),
    )


def set_label(probs: torch.Tensor, box: tuple[slice, slice], where: np.ndarray, channel: int) -> None:
    """In place: the pixels ``where`` ((h, w) bool within ``box`` of the (K + 1, H, W) ``probs``)
    become certain of ``channel``."""
    window = probs[(slice(None), *box)]
    at = torch.from_numpy(where).to(probs.device)
    window[:, at] = 0.0
    window[channel, at] = 1.0


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(0)`` for a few channels, ties to the first, as uint8 (at most 256 channels).

    torch's reduction over the outer dimension of a (K + 1, H, W) tensor strides through memory
    (40 ms at 480p on 2 cores). On a CPU each channel takes a few contiguous passes of numpy, without
    boolean indexing: 0.17 ms for two channels at 854x480 on one core, five 0.6 ms, against 2.7 and
    7.6 for torch's elementwise loop, which a GPU keeps.
    """
    if probs.device.type != "cpu":
        best = probs[0]
        ids = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
        for channel in range(1, probs.shape[0]):
            ids[probs[channel] > best] = channel
            best = torch.maximum(best, probs[channel])
        return ids
    values = probs.detach().float().numpy()
    best = values[0].copy()
    ids = np.zeros(values.shape[1:], dtype=np.uint8)
    better = np.empty(values.shape[1:], dtype=bool)
    step = np.empty(values.shape[1:], dtype=np.uint8)
    for channel in range(1, values.shape[0]):
        np.greater(values[channel], best, out=better)
        np.subtract(np.uint8(channel), ids, out=step)  # ids < channel here: no wrap-around
        np.multiply(step, better, out=step)
        ids += step
        np.maximum(best, values[channel], out=best)
    return torch.from_numpy(ids)
