"""What the values of a mask mean, and what a mask on a later frame does: one rule for the engine's API and the CLI."""

from __future__ import annotations

import numpy as np


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
