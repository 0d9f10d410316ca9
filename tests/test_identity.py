"""Several objects: identities held by the previous frame; small clips enlarged; the refinement
settings and its window; and the compositing that builds the multi-object dev clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.bilateral_params import BilateralParams
from engine.config import SessionConfig
from engine.embedder import processing_size
from engine.errors import VosError
from engine.memory import PixelSet, memory_quotas
from engine.presets import session_config_for
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


def test_memory_quotas_share_the_objects_part_by_a_power_of_their_counts():
    counts = [300, 600, 20]  # background, a large object, a small look-alike
    assert sum(memory_quotas(counts, 64, 0.5)) == 64
    assert memory_quotas(counts, 64, 1.0)[0] == memory_quotas(counts, 64, 0.5)[0] == round(64 * 300 / 920)
    by_count, root, same = (memory_quotas(counts, 64, power) for power in (1.0, 0.5, 0.0))
    assert by_count[2] <= 2 < root[2] < same[2] == 20  # the small object's share grows as the power falls
    assert root[1] + root[2] == by_count[1] + by_count[2]  # the background's share does not move


def test_memory_quotas_give_what_a_small_object_cannot_use_to_the_others():
    assert memory_quotas([40, 100, 3, 100], 30, 0.0) == [5, 11, 3, 11]  # 3 of its 8, the rest to the others
    assert memory_quotas([5, 2, 1], 10, 0.5) == [5, 2, 1]  # fewer than the quota: all of them
    assert memory_quotas([1000, 5, 5, 5], 2, 0.5) == [2, 0, 0, 0]


def test_the_memory_keeps_a_small_objects_pixels_beside_a_large_look_alike():
    def remembered(power: float) -> list[int]:
        p = registered(propagator(memory_object_power=power, memory_per_frame=40, memory_objects=1), 2)
        labels = torch.tensor([0] * 200 + [1] * 300 + [2] * 12)
        probs = torch.nn.functional.one_hot(labels, 3).float()
        pixels = PixelSet(torch.randn(len(labels), 8), torch.zeros(len(labels), 3), labels)
        p._remember(pixels, probs, None)
        return torch.bincount(p.memory.pixels().labels, minlength=3).tolist()

    by_count, root = remembered(1.0), remembered(0.5)
    assert sum(by_count) == 40 and root == memory_quotas([200, 300, 12], 40, 0.5) == [16, 21, 3]
    assert root[2] > 2 * 40 * 12 / 512  # drawn at random, the small object gives about 1 of the 40


def test_the_memory_grows_with_the_objects_up_to_memory_objects():
    def filled(objects: int, limit: int) -> tuple[int, int]:
        p = propagator(memory_per_frame=10, memory_size=30, memory_objects=limit)
        mask = np.zeros((4, 64), np.uint8)
        for i in range(objects):
            mask[:, 8 * i : 8 * i + 8] = i + 1
        p.reference(PixelSet(torch.randn(32, 8), torch.zeros(32, 3), torch.zeros(32, dtype=torch.long)), mask, (2, 16))
        labels = torch.arange(200) % (objects + 1)
        pixels = PixelSet(torch.randn(200, 8), torch.zeros(200, 3), labels)
        p._remember(pixels, torch.nn.functional.one_hot(labels, objects + 1).float(), None)
        first = len(p.memory)
        for _ in range(5):
            p._remember(pixels, torch.nn.functional.one_hot(labels, objects + 1).float(), None)
        return first, len(p.memory)

    assert filled(1, 3) == (10, 30)  # one object: as before
    assert filled(2, 3) == (20, 60)
    assert filled(5, 3) == (30, 90)  # at most three times
    assert filled(5, 1) == (10, 30)


def test_the_memory_of_one_object_is_drawn_as_before_whatever_the_power():
    def remembered(power: float) -> list[int]:
        p = registered(propagator(memory_object_power=power, memory_per_frame=20), 1)
        labels = torch.tensor([0] * 50 + [1] * 50)
        pixels = PixelSet(torch.randn(100, 8), torch.zeros(100, 3), labels)
        p._remember(pixels, torch.nn.functional.one_hot(labels, 2).float(), None)
        return p.memory.pixels().coords[:, 0].tolist() + p.memory.pixels().labels.tolist()

    assert remembered(0.5) == remembered(1.0)


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
    assert processing_size(96, 128, 768, min_size=640) == (192, 256)  # at most twice the size


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


def test_refinement_settings_reach_the_solver(tiny_model):
    from engine.session import VideoSession

    config = SessionConfig(refine="bilateral", refine_size=512, refine_lambda=512.0, refine_iterations=7)
    session = VideoSession(tiny_model, config)
    assert session.refiner.params.max_side == 512 and session.refiner.params.lam == 512.0
    assert session.refiner.params.iterations == 7
    with pytest.raises(VosError, match="iteration"):
        SessionConfig(refine_iterations=0)
    full = VideoSession(tiny_model, SessionConfig(refine="bilateral", refine_size=0))
    assert full.refiner.params.max_side is None
    # The default chain: each at its own working resolution (0: the frame's own).
    learned, solver = VideoSession(tiny_model, SessionConfig(refine_size=384)).refiner.stages
    assert learned.work_size == 576 and solver.params.max_side == 384
    learned, solver = VideoSession(tiny_model, SessionConfig(learned_size=0, refine_size=0)).refiner.stages
    assert learned.work_size == 0 and solver.params.max_side is None
    with pytest.raises(VosError, match="refinement sizes"):
        SessionConfig(learned_size=-1)
    # A small frame is enlarged for the learned refiner at most twice by default, not at all in "fast".
    assert learned.enlarge == 2.0
    fast = session_config_for(tiny_model, preset="fast")
    assert fast.learned_enlarge == 1.0 and VideoSession(tiny_model, fast).refiner.stages[0].enlarge == 1.0
    with pytest.raises(VosError, match="learned_enlarge"):
        SessionConfig(learned_enlarge=0.5)


def test_the_uncertain_window_is_the_unsure_pixels_box_widened():
    from engine.bilateral_refiner import uncertain_window

    confidence = np.ones((50, 80), np.float32)
    assert uncertain_window(confidence, 5) is None
    confidence[20:25, 30:40] = 0.3
    assert uncertain_window(confidence, 5) == (slice(15, 30), slice(25, 45))
    confidence[48, 78] = 0.0
    assert uncertain_window(confidence, 5) == (slice(15, 50), slice(25, 80))  # clipped to the frame


def test_the_windowed_refinement_matches_the_whole_frame_one_inside_and_keeps_the_rest():
    from engine.bilateral_refiner import BilateralRefiner

    rng = np.random.default_rng(0)
    frame = np.zeros((120, 200, 3), np.uint8)
    frame[30:80, 60:130] = 200  # a bright square object
    frame = np.clip(frame.astype(int) + rng.integers(0, 10, frame.shape), 0, 255).astype(np.uint8)
    target = np.zeros((120, 200), np.float32)
    target[30:80, 60:130] = 1.0
    soft = cv2_blur(target)
    probs = np.stack([1 - soft, soft]).astype(np.float32)
    params = BilateralParams(max_side=None)
    whole = BilateralRefiner(params)(frame, probs)
    windowed = BilateralRefiner(params, crop=True)(frame, probs)
    assert np.array_equal(windowed[:, :, 180:], probs[:, :, 180:])  # far from the object: untouched
    assert np.mean(whole.argmax(0) != windowed.argmax(0)) < 0.002
    assert np.mean(windowed.argmax(0) != target) < np.mean(probs.argmax(0) != target)  # and it refines
    confident = np.stack([1 - target, target])
    assert np.array_equal(BilateralRefiner(params, crop=True)(frame, confident), confident)  # nothing to do


def cv2_blur(mask: np.ndarray) -> np.ndarray:
    import cv2

    small = cv2.resize(mask, (mask.shape[1] // 8, mask.shape[0] // 8), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
