"""What the values of a first-frame mask mean: one rule for the engine's API and the CLI's mask files alike."""

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
