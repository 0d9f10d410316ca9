"""The reference bank keeps every object cell and the background near it, and only a lattice of
the background beyond (``bank_stride``, ``bank_band``): retrieval's product shrinks with the bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import VosError
from engine.memory import PixelSet
from engine.propagation import Propagator
from engine.session import SessionConfig, VideoSession


def _reference(stride: int, band: int, mask: np.ndarray) -> Propagator:
    """A propagator given one annotated 12 x 16 grid frame (one cell per pixel) with ``mask``."""
    grid = mask.shape
    cells = grid[0] * grid[1]
    keys = torch.nn.functional.normalize(torch.randn(cells, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(cells)], dim=1).float()
    propagator = Propagator(
        SessionConfig(refine="none", project_dim=0, bank_stride=stride, bank_band=band), torch.device("cpu")
    )
    propagator.reference(PixelSet(keys, coords, torch.zeros(cells, dtype=torch.long)), mask, grid)
    return propagator


def test_the_bank_keeps_objects_and_their_band_and_a_lattice_of_the_far_background():
    mask = np.zeros((12, 16), np.uint8)
    mask[5:7, 6:9] = 1
    mask[0, 15] = 2  # a second object in a corner, off the lattice
    bank = _reference(2, 1, mask).bank.pixels()
    kept = {(int(x), int(y)) for x, y, _ in bank.coords.tolist()}
    for y in range(12):
        for x in range(16):
            near = (mask[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] > 0).any()
            on_lattice = y % 2 == 0 and x % 2 == 0
            assert ((x, y) in kept) == bool(near or on_lattice), (x, y)
    cells = zip(bank.coords.tolist(), bank.labels.tolist(), strict=True)
    labels = {(int(x), int(y)): int(label) for (x, y, _), label in cells}
    assert labels[(15, 0)] == 2 and labels[(7, 5)] == 1 and labels[(0, 0)] == 0


def test_stride_one_keeps_every_cell():
    mask = np.zeros((12, 16), np.uint8)
    mask[5:7, 6:9] = 1
    assert len(_reference(1, 2, mask).bank) == 12 * 16


def test_a_thinned_bank_still_segments_a_moved_object(tiny_model):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    frame[24:64, 32:72] = (220, 60, 30)
    mask = np.zeros((96, 128), np.uint8)
    mask[24:64, 32:72] = 1
    sessions = [VideoSession(tiny_model, SessionConfig(refine="none", bank_stride=s)) for s in (1, 2)]
    for session in sessions:
        session.step(frame, mask)
    assert len(sessions[1].bank) < len(sessions[0].bank)
    moved = np.roll(frame, 8, axis=1)
    full, thinned = (s.to_ids(s.step(moved)) for s in sessions)
    truth = np.roll(mask, 8, axis=1)
    assert (thinned == full).mean() > 0.95
    assert (thinned == truth).mean() > 0.9


@pytest.mark.parametrize("settings", [{"bank_stride": 0}, {"bank_band": -1}])
def test_bad_bank_settings_are_refused(settings):
    with pytest.raises(VosError, match="bank"):
        SessionConfig(**settings)
