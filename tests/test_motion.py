"""Optical flow on the embedding grid, and moving the previous probabilities along it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.motion import GridFlow, warp_back


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (flow needs structure to lock on to), (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def test_warp_back_reads_the_previous_maps_where_the_flow_points():
    maps = torch.zeros(1, 6, 8)
    maps[0, 2, 3] = 1.0
    flow = torch.zeros(6, 8, 2)
    flow[..., 0] = -2.0  # every cell came from two cells to its left: the content moved right
    flow[..., 1] = 1.0  # and from one cell below: it moved up
    moved = warp_back(maps, flow)
    assert moved.shape == maps.shape
    assert moved[0, 1, 5] == pytest.approx(1.0)
    assert moved[0].sum() == pytest.approx(1.0)
    assert torch.equal(warp_back(maps, torch.zeros(6, 8, 2)), maps)


def test_grid_flow_finds_a_shift_in_grid_cells_with_the_right_sign():
    frame = textured(256, 384)
    shifted = np.roll(frame, shift=(8, 16), axis=(0, 1))  # content moves 16 px right, 8 px down
    flow = GridFlow()
    assert flow.step(frame, (32, 48)) is None  # the first frame has no previous one
    cells = flow.step(shifted, (32, 48))
    assert cells.shape == (32, 48, 2)
    inner = cells[8:-8, 8:-8]  # away from the wrapped border
    # 8-pixel cells: this frame's content was 2 cells left and 1 cell up in the previous frame.
    assert inner[..., 0].median().item() == pytest.approx(-2.0, abs=0.25)
    assert inner[..., 1].median().item() == pytest.approx(-1.0, abs=0.25)


def test_grid_flow_restarts_when_the_frame_size_changes():
    flow = GridFlow()
    flow.step(textured(128, 128), (16, 16))
    assert flow.step(textured(256, 128), (32, 16)) is None
