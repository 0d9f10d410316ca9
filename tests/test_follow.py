"""Several objects: the reference bank's object pixels follow their objects (engine.follow)."""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.config import SessionConfig
from engine.follow import ObjectCentres, object_centres
from engine.memory import PixelSet, ReferenceBank
from engine.model import coordinate_grid
from engine.propagation import Propagator
from engine.retrieval import RetrievalConfig

GRID = (1, 12)


def test_object_centres_are_the_mean_of_the_cells_each_slot_holds():
    probs = torch.zeros(3, 2, 5)
    probs[0] = 1.0
    probs[1, 0, 1:3], probs[0, 0, 1:3] = 1.0, 0.0  # object 1 at x 0.25 and 0.5, row 0
    probs[1, 1, 4], probs[0, 1, 4] = 0.4, 0.6  # a cell it holds less than half of does not count
    centres = object_centres(probs)
    assert torch.allclose(centres[1], torch.tensor([0.375, 0.0]))
    assert torch.isnan(centres[2]).all()  # object 2 holds no cell


def test_a_lost_object_keeps_its_last_centre():
    centres = ObjectCentres()
    centres.annotated(torch.tensor([[0.5, 0.5], [0.2, 0.3], [0.8, 0.3]]))
    centres.update(torch.tensor([[0.5, 0.5], [0.4, 0.3], [0.1, 0.1]]), lost=torch.tensor([False, True]))
    bank = PixelSet(torch.zeros(3, 2), torch.zeros(3, 3), torch.tensor([0, 1, 2]))
    origins = torch.tensor([[0.5, 0.5], [0.2, 0.3], [0.8, 0.3]])
    moved = centres.followed(bank, origins).coords[:, :2]
    assert torch.allclose(moved, torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.0, 0.0]]))  # only object 1 moved


def test_the_bank_gives_its_pixels_origins_in_their_order():
    bank = ReferenceBank(recent=1)

    def frame(label: int) -> tuple[PixelSet, torch.Tensor]:
        return PixelSet(torch.zeros(2, 2), torch.zeros(2, 3), torch.full((2,), label)), torch.full((2, 2), label / 10)

    for label, permanent in ((1, True), (2, False), (3, False), (4, True)):
        pixels, origins = frame(label)
        bank.add(pixels, permanent=permanent, origins=origins)
    assert bank.pixels().labels.tolist() == [1, 1, 4, 4, 3, 3]
    assert torch.allclose(bank.origins()[:, 0], bank.pixels().labels.float() / 10)
    bank.add(*frame(5)[:1], permanent=False)  # a frame without origins: none for the bank
    assert bank.origins() is None


def two_look_alikes(follow: bool, objects: int = 2) -> torch.Tensor:
    """Objects 1 and 2 look the same (one key), annotated at cells 2-3 and 8-9 of a 1 x 12 grid; on
    the next frame object 1 is at cells 7-8 and object 2 at 10-11. -> that frame's (K + 1, 1, 12)."""
    p = Propagator(
        SessionConfig(
            retrieval=RetrievalConfig(spatial_weight=1.0),
            follow_objects=follow,
            online=False,
            project_dim=None,
            bank_stride=1,
            prior_gate=False,
            prior_radius=12,
            identity_power=0.0,
            interior_stride=1,
        ),
        torch.device("cpu"),
    )
    alike, other = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    coords = coordinate_grid(*GRID, 0.0).reshape(3, -1).T
    mask = np.zeros(GRID, dtype=np.uint8)
    mask[0, 2:4] = 1
    if objects == 2:
        mask[0, 8:10] = 2
    keys = torch.stack([alike if m else other for m in mask[0]])
    p.reference(PixelSet(keys, coords, torch.empty(0, dtype=torch.long)), mask, GRID)
    now = torch.zeros(objects + 1, *GRID)
    now[0] = 1.0
    now[1, 0, 7:9], now[0, 0, 7:9] = 1.0, 0.0
    if objects == 2:
        now[2, 0, 10:12], now[0, 0, 10:12] = 1.0, 0.0
    p._previous = now
    query = torch.stack([alike if now[0, 0, c] == 0 else other for c in range(GRID[1])])
    return p.propagate(PixelSet(query, coords, torch.empty(0, dtype=torch.long)), GRID, None)


def test_a_look_alike_now_where_the_other_was_annotated_keeps_its_identity():
    followed, fixed = two_look_alikes(True), two_look_alikes(False)
    assert followed[:, 0, 8].argmax() == 1  # object 1 moved onto object 2's annotated cells
    assert fixed[:, 0, 8].argmax() == 2  # ranked at their annotated places, object 2's pixels win there
    assert followed[:, 0, 10].argmax() == 2 and followed[:, 0, 11].argmax() == 2


def test_one_object_is_not_followed():
    on, off = two_look_alikes(True, objects=1), two_look_alikes(False, objects=1)
    assert torch.equal(on, off)
    assert not math.isnan(float(on.sum()))
