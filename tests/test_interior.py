"""Sparse queries in settled regions (engine.interior): which cells retrieval labels, which copy a
neighbour, and which blocks are retrieved again when their retrieved cell changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.propagation as propagation
from engine.errors import VosError
from engine.interior import blocks_to_redo, plan_queries, settled_cells
from engine.session import SessionConfig, VideoSession


def _moved(object_box=(slice(3, 9), slice(4, 12)), grid=(12, 16), sure=0.99) -> torch.Tensor:
    """(2, gh, gw): background and one rectangular object, each ``sure`` where it is."""
    obj = torch.zeros(grid)
    obj[object_box] = 1.0
    fg = obj * sure + (1 - obj) * (1 - sure)
    return torch.stack([1 - fg, fg])


def test_settled_cells_are_sure_and_agree_with_all_their_neighbours():
    moved = _moved()
    moved[:, 0, 15] = 0.5  # one unsure cell in a corner of the background
    settled, label = settled_cells(moved, level=0.9)
    assert label[5, 6] == 1 and label[0, 0] == 0
    assert settled[5, 6] and settled[0, 0] and settled[11, 15]  # object interior, background, frame edge
    assert not settled[3, 4] and not settled[2, 4] and not settled[8, 11]  # on or beside the boundary
    assert not settled[0, 15] and not settled[1, 14]  # the unsure cell and its neighbours


def test_a_plan_covers_every_cell_to_label_once_and_copies_only_retrieved_anchors():
    inside = torch.ones(12, 16, dtype=torch.bool)
    inside[:, 14:] = False  # the gate left out the last two columns
    settled, _ = settled_cells(_moved(), level=0.9)
    plan = plan_queries(inside, settled, stride=2)
    query, filled = set(plan.query.tolist()), set(plan.filled.tolist())
    assert not query & filled and query | filled == set(torch.nonzero(inside.reshape(-1)).squeeze(1).tolist())
    assert set(plan.anchor.tolist()) <= query
    for cell, anchor in zip(plan.filled.tolist(), plan.anchor.tolist(), strict=True):
        y, x = divmod(cell, 16)
        assert anchor == (y - y % 2) * 16 + (x - x % 2) and settled[y, x] and settled.reshape(-1)[anchor]
    assert len(query) < 0.6 * int(inside.sum())  # most of this frame is settled
    nothing_settled = plan_queries(inside, torch.zeros_like(settled), 2)
    assert torch.equal(nothing_settled.query, torch.nonzero(inside.reshape(-1))[:, 0])


def test_blocks_whose_anchor_changed_or_became_unsure_are_redone():
    settled, label = settled_cells(_moved(), level=0.9)
    plan = plan_queries(torch.ones(12, 16, dtype=torch.bool), settled, stride=2)
    probs = torch.zeros(12 * 16, 2)
    probs[torch.arange(12 * 16), label.reshape(-1)] = 1.0  # every anchor kept its label
    assert len(blocks_to_redo(plan, probs, label, 0.9, 2)) == 0
    probs[0] = torch.tensor([0.0, 1.0])  # the anchor of the top-left block turned into the object
    probs[10 * 16 + 14] = torch.tensor([0.4, 0.6])  # a background anchor became unsure
    redo = set(blocks_to_redo(plan, probs, label, 0.9, 2).tolist())
    filled = set(plan.filled.tolist())
    top_left = {y * 16 + x for y in range(4) for x in range(4)} & filled  # its block and the blocks beside it
    bottom_right = {y * 16 + x for y in range(8, 12) for x in range(12, 16)} & filled
    assert redo == top_left | bottom_right


def test_sparse_queries_segment_like_full_ones_with_fewer_queries(tiny_model, monkeypatch):
    queried = []
    knn = propagation.knn_probabilities

    def counting(query, *args, **kwargs):
        queried.append(len(query))
        return knn(query, *args, **kwargs)

    monkeypatch.setattr(propagation, "knn_probabilities", counting)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (192, 256, 3), dtype=np.uint8)
    mask = np.zeros((192, 256), np.uint8)
    mask[48:128, 64:144] = 1
    results, counts = [], []
    for stride in (1, 2):
        session = VideoSession(tiny_model, SessionConfig(refine="none", interior_stride=stride, max_size=256))
        queried.clear()
        labels = []
        for shift in range(0, 24, 4):
            frame = background.copy()
            frame[48:128, 64 + shift : 144 + shift] = (220, 60, 30)
            labels.append(session.to_ids(session.step(frame, mask if shift == 0 else None)))
        results.append(labels)
        counts.append(sum(queried))
    assert counts[1] < 0.7 * counts[0]
    for full, sparse in zip(*results, strict=True):
        assert (full == sparse).mean() > 0.98


def _square_scene():
    """A propagator given a 3x3 object on a 12x16 grid of one background key -> (propagator, keys,
    coords, grid)."""
    from engine.memory import PixelSet

    propagator = propagation.Propagator(
        SessionConfig(refine="none", project_dim=0, interior_stride=2, prior_gate=False), torch.device("cpu")
    )
    grid = (12, 16)
    cells = grid[0] * grid[1]
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.zeros(cells)], dim=1).float()
    background, colour = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)))
    keys = background.expand(cells, -1).clone()
    mask = np.zeros(grid, np.uint8)
    mask[2:5, 2:5] = 1
    keys[torch.from_numpy(mask.reshape(-1) > 0)] = colour
    propagator.reference(PixelSet(keys, coords, torch.zeros(0, dtype=torch.long)), mask, grid)
    return propagator, keys, coords, grid, colour


def test_an_object_entering_a_settled_region_is_found():
    """A block whose retrieved cell changed is retrieved whole, not copied from the old label."""
    from engine.memory import PixelSet

    propagator, keys, coords, grid, colour = _square_scene()
    later = keys.clone()  # the object stays where it was
    entering = np.zeros(grid, bool)
    entering[8:10, 9:11] = True  # a 2x2 block of a look-alike, deep in the settled background
    later[torch.from_numpy(entering.reshape(-1))] = colour
    probs = propagator.propagate(PixelSet(later, coords, torch.zeros(0, dtype=torch.long)), grid, None)
    found = probs.argmax(0).numpy() == 1
    assert found[entering].all() and found[2:5, 2:5].all() and found.sum() == 9 + 4


def test_the_bank_and_the_memory_are_joined_once_until_either_changes():
    """A frame with a redo searches the same pixels twice: one concatenation, refreshed when the
    memory takes in a frame."""
    from engine.memory import PixelSet

    propagator, keys, coords, grid, _ = _square_scene()
    frame = PixelSet(keys, coords, torch.zeros(0, dtype=torch.long))
    propagator.propagate(frame, grid, None)
    searched = propagator._bank()
    assert propagator._bank() is searched
    assert len(searched) == len(propagator.bank) + len(propagator.memory) > len(propagator.bank)
    propagator.propagate(frame, grid, None)  # the memory takes in this frame's sure cells
    again = propagator._bank()
    assert again is not searched and len(again) == len(propagator.bank) + len(propagator.memory) > len(searched)


@pytest.mark.parametrize("settings", [{"interior_stride": 0}, {"interior_level": 1.5}])
def test_bad_interior_settings_are_refused(settings):
    with pytest.raises(VosError, match="interior"):
        SessionConfig(**settings)


def test_a_lost_object_coming_back_in_settled_background_is_found_with_sparse_queries(monkeypatch):
    """A lost object may come back anywhere: the settled background is still retrieved one cell in
    a block, and the block whose retrieved cell turns into the object is retrieved whole."""
    from engine.memory import PixelSet

    propagator, keys, coords, grid, colour = _square_scene()
    gone = torch.zeros(2, *grid)
    gone[0], gone[1, 3, 3] = 0.99, 0.01  # a sure background; the object's best cell is below prior_lost: lost
    propagator._previous = gone
    assert propagator._lost(propagator._moved_previous(grid, None)).all()
    queried = []
    knn = propagation.knn_probabilities
    monkeypatch.setattr(propagation, "knn_probabilities", lambda q, *a, **k: queried.append(len(q)) or knn(q, *a, **k))
    later = keys[:1].expand(len(keys), -1).clone()  # background everywhere: it left its old place
    back = np.zeros(grid, bool)
    back[8:10, 10:12] = True  # it comes back as a 2x2 block deep in what the last frame took for background
    later[torch.from_numpy(back.reshape(-1))] = colour
    probs = propagator.propagate(PixelSet(later, coords, torch.zeros(0, dtype=torch.long)), grid, None)
    found = probs.argmax(0).numpy() == 1
    assert found[back].all() and found.sum() == 4
    assert sum(queried) < 0.5 * grid[0] * grid[1]  # settled background: one cell a block, and the redone blocks
