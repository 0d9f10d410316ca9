"""Several objects: identities held by the previous frame; the bank's cells; small clips enlarged;
the refinement settings; and the compositing that builds the multi-object dev clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import SessionConfig
from engine.embedder import processing_size
from engine.memory import PixelSet
from engine.propagation import Propagator
from trainer.composite import Path, cut_out, paste


def propagator(**settings) -> Propagator:
    p = Propagator(SessionConfig(**settings), torch.device("cpu"))
    return p


def registered(p: Propagator, objects: int) -> Propagator:
    p.registry.register(list(range(1, objects + 1)))
    return p


def test_identity_gives_a_split_cell_to_the_object_that_held_it():
    p = registered(propagator(identity_power=1.0), 2)
    probs = torch.tensor([[0.2, 0.4, 0.4], [0.2, 0.4, 0.4], [0.9, 0.05, 0.05]])
    moved = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).reshape(3, 1, 3)  # (K+1, 1, M)
    out = p._apply_identity(probs, moved)
    assert out[0, 1] > 0.75 and out[1, 2] > 0.75  # cell 0 was object 1's, cell 1 object 2's
    assert torch.allclose(out[:, 0], probs[:, 0])  # the background keeps what retrieval gave it
    assert torch.allclose(out.sum(dim=1), torch.ones(3))
    assert torch.allclose(out[2], probs[2], atol=1e-6)  # a cell no object held is shared evenly


def test_identity_stronger_power_holds_against_a_sharper_vote():
    moved = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).reshape(3, 1, 2)  # object 2 held the other cell
    probs = torch.tensor([[0.0, 0.01, 0.99], [0.0, 0.01, 0.99]])
    weak = registered(propagator(identity_power=1.0), 2)._apply_identity(probs, moved)
    strong = registered(propagator(identity_power=3.0), 2)._apply_identity(probs, moved)
    assert weak[0, 2] > weak[0, 1] and strong[0, 1] > strong[0, 2]


def test_identity_changes_nothing_for_one_object_or_when_off():
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    moved = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(2, 1, 2)
    assert torch.equal(registered(propagator(), 1)._apply_identity(probs, moved), probs)
    probs3 = torch.tensor([[0.2, 0.4, 0.4]])
    moved3 = torch.tensor([0.0, 1.0, 0.0]).reshape(3, 1, 1)
    assert torch.equal(registered(propagator(identity_power=0.0), 2)._apply_identity(probs3, moved3), probs3)


def test_a_lost_object_is_not_held_back_by_the_others():
    p = registered(propagator(identity_power=3.0), 2)
    moved = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]).reshape(3, 1, 2)  # object 2 lost
    probs = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    out = p._apply_identity(probs, moved)
    assert out[1, 2] == pytest.approx(0.5)  # where nobody was it keeps its vote
    assert out[0, 2] == pytest.approx(0.5)  # and the object that is there does not push it out


def test_small_frames_are_enlarged_only_when_asked():
    assert processing_size(240, 432, 768) == (256, 448)
    assert processing_size(240, 432, 768, min_size=768) == (416, 768)
    assert processing_size(480, 854, 768, min_size=768) == (416, 768)  # a large frame is only reduced
    assert processing_size(240, 432, 640, min_size=768) == (352, 640)  # never past max_size


def test_paste_in_front_hides_the_host_and_behind_does_not():
    image = np.zeros((20, 20, 3), np.uint8)
    ids = np.zeros((20, 20), np.uint8)
    ids[5:15, 5:15] = 1
    patch = np.full((6, 6, 3), 200, np.uint8)
    mask = np.ones((6, 6), bool)
    front_image, front = paste(image, ids, patch, mask, centre=(5.0, 5.0), scale=1.0, object_id=2, in_front=True)
    _, behind = paste(image, ids, patch, mask, centre=(5.0, 5.0), scale=1.0, object_id=2, in_front=False)
    assert (front[2:8, 2:8] == 2).all()
    assert (behind[5:8, 5:8] == 1).all() and (behind[2:5, 2:8] == 2).all()
    assert front_image[4, 4].min() > 150 and ids[6, 6] == 1 and image.max() == 0  # inputs untouched


def test_paste_outside_the_frame_is_clipped():
    image = np.zeros((10, 10, 3), np.uint8)
    ids = np.zeros((10, 10), np.uint8)
    _, out = paste(image, ids, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool),
                   centre=(0.0, 0.0), scale=1.0, object_id=3, in_front=True)  # fmt: skip
    assert (out[:2, :2] == 3).all() and np.count_nonzero(out) == 4
    _, gone = paste(image, ids, np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool),
                    centre=(50.0, 50.0), scale=1.0, object_id=3, in_front=True)  # fmt: skip
    assert not gone.any()


def test_cut_out_and_path():
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    mask = np.zeros((5, 5), bool)
    assert cut_out(image, mask) is None
    mask[1:3, 2:5] = True
    patch, patch_mask = cut_out(image, mask)
    assert patch.shape == (2, 3, 3) and patch_mask.all()
    path = Path(start=(10.0, 5.0), velocity=(2.0, -1.0), scale=0.5)
    assert path.at(3) == (16.0, 2.0, 0.5)
    a = Path.random(np.random.default_rng(1), (0.0, 0.0), 1.0)
    assert a == Path.random(np.random.default_rng(1), (0.0, 0.0), 1.0)


def test_bank_keeps_the_cells_near_objects_and_a_spread_fraction_of_the_rest():
    fractions = torch.zeros(2, 20, 24)
    fractions[0] = 1.0
    fractions[1, 8:12, 10:14] = 1.0
    fractions[0, 8:12, 10:14] = 0.0
    everything = propagator()._bank_cells(fractions, (20, 24))
    assert len(everything) == 20 * 24
    cells = propagator(bank_far=0.25, bank_near=2)._bank_cells(fractions, (20, 24))
    kept = torch.zeros(20 * 24, dtype=torch.bool)
    kept[cells] = True
    kept = kept.reshape(20, 24)
    assert kept[6:14, 8:16].all()  # the object and a ring of 2 cells around it
    far = torch.ones(20, 24, dtype=torch.bool)
    far[6:14, 8:16] = False
    assert 0.2 < kept[far].float().mean() < 0.3
    assert kept[:, :12][far[:, :12]].any() and kept[:, 12:][far[:, 12:]].any()  # spread, not one side


def test_refinement_settings_reach_the_solver(tiny_model):
    from engine.session import VideoSession

    session = VideoSession(tiny_model, SessionConfig(refine_size=512, refine_lambda=512.0))
    assert session.refiner.params.max_side == 512 and session.refiner.params.lam == 512.0
    assert VideoSession(tiny_model, SessionConfig(refine_size=0)).refiner.params.max_side is None
