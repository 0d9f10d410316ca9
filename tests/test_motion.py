"""Optical flow on the embedding grid, and moving the previous probabilities along it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import engine.motion as motion
from engine.motion import GridFlow, warp_back, warp_frame


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


def test_warp_frame_moves_full_size_probabilities_along_a_flow_of_another_size():
    probs = torch.zeros(2, 40, 60)
    probs[1, 10:20, 10:20] = 1.0
    probs[0] = 1.0 - probs[1]
    assert torch.allclose(warp_frame(probs, torch.zeros(20, 30, 2)), probs, atol=1e-5)
    flow = torch.zeros(20, 30, 2)
    flow[..., 0] = -3.0  # at half the size: every pixel came from 6 full-size pixels to its left
    flow[..., 1] = 1.0  # and from 2 below: the square moved 6 right and 2 up
    moved = warp_frame(probs, flow)
    assert moved.shape == probs.shape
    assert torch.equal(moved[1] > 0.5, torch.roll(probs[1] > 0.5, shifts=(-2, 6), dims=(0, 1)))
    assert torch.allclose(moved.sum(0), torch.ones(40, 60), atol=1e-5)
    # Off the CPU the same move is grid_sample's (OpenCV's remap rounds positions to 1/32 pixel).
    smooth = torch.from_numpy(cv2.GaussianBlur(probs[1].numpy(), (0, 0), 3))
    wavy = torch.from_numpy(
        cv2.GaussianBlur(np.random.default_rng(0).normal(0, 4, (20, 30, 2)).astype(np.float32), (0, 0), 3)
    )
    assert torch.allclose(motion._grid_sample(smooth[None], wavy), motion._remap(smooth[None], wavy), atol=2e-3)


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
