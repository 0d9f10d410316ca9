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


def _reference(stride: int, band: int, mask: np.ndarray, grid: tuple[int, int] | None = None, **settings) -> Propagator:
    """A propagator given one annotated frame with ``mask`` on a 12 x 16 ``grid`` (default: the
    mask's own, one cell per pixel)."""
    grid = grid or mask.shape
    cells = grid[0] * grid[1]
    keys = torch.nn.functional.normalize(torch.randn(cells, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(cells)], dim=1).float()
    config = SessionConfig(refine="none", project_dim=0, bank_stride=stride, bank_band=band, **settings)
    propagator = Propagator(config, torch.device("cpu"))
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


def _bank_labels(mask: np.ndarray, **settings) -> dict[tuple[int, int], int]:
    """The bank's label of each cell (x, y) after one annotated 96 x 128 frame on the 12 x 16 grid."""
    bank = _reference(1, 2, mask, (12, 16), **settings).bank.pixels()
    cells = zip(bank.coords.tolist(), bank.labels.tolist(), strict=True)
    return {(int(x), int(y)): int(label) for (x, y, _), label in cells}


def test_a_small_object_takes_the_cells_it_fills_a_quarter_of():
    """On a grid of 8-pixel cells an 11x11 object fills one cell whole, two cells 3/8 and one 9/64;
    an object of 48 cells keeps only the cells it fills most of."""
    mask = np.zeros((96, 128), np.uint8)
    mask[21:32, 21:32] = 1
    mask[40:88, 64:128] = 2  # cells x 8-15, y 5-10
    mask[37:40, 64:128] = 2  # and 3/8 of each cell of row 4 above them
    corners = ((3, 3), (2, 3), (3, 2), (2, 2))
    labels = _bank_labels(mask, small_object_cells=8, small_object_fraction=0.25)
    assert [labels[c] for c in corners] == [1, 1, 1, 0]
    assert labels[(9, 4)] == 0 and labels[(9, 5)] == 2  # the large object: only the cells it fills most of
    plain = _bank_labels(mask, small_object_cells=0)
    assert [plain[c] for c in corners] == [1, 0, 0, 0] and plain == _bank_labels(mask, small_object_cells=1)
    low = _bank_labels(mask, small_object_cells=8, small_object_fraction=0.1)
    assert [low[c] for c in corners] == [1] * 4
    assert _bank_labels(mask, small_object_cells=49, small_object_fraction=0.25)[(9, 4)] == 2


def test_a_small_object_does_not_take_a_cell_another_object_fills_more_of():
    """Cell (3, 2): background 28 of its 64 pixels, object 1 20, object 2 (small, later) 16."""
    mask = np.zeros((96, 128), np.uint8)
    mask[0:18, 24:32] = 1  # cells (3, 0), (3, 1) and two rows of (3, 2)...
    mask[18, 24:28] = 1  # ...and four pixels more: 20 in all
    mask[22:32, 21:32] = 2  # two rows of (3, 2): 16 pixels
    labels = _bank_labels(mask, small_object_cells=8, small_object_fraction=0.25)
    assert labels[(3, 2)] == 1 and labels[(2, 3)] == 2 and labels[(3, 3)] == 2


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
