"""A frame carried between two key frames takes the mean of the key frame before, moved forward,
and the key frame after, moved back (engine.between), when the caller refines later and in frame
order; stepped and refined at once, it takes the key frame before alone."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.between import Between, InOrder
from engine.config import SessionConfig
from engine.errors import VosError
from engine.motion import warp_back
from engine.refine_stage import CarriedProbs, PendingProbs
from engine.session import VideoSession
from tests.test_window import clip

# Every other frame carried at the grid and refined (``fast``'s schedule; the defaults carry by motion),
# small and in torch.
CONFIG = SessionConfig(runtime="torch", half=False, min_size=0, max_size=384, refine="bilateral", carry_motion=0.0)


def grid(seed: int, channels: int = 2, size: tuple[int, int] = (6, 8)) -> torch.Tensor:
    probs = torch.rand(channels, *size, generator=torch.Generator().manual_seed(seed))
    return probs / probs.sum(0, keepdim=True)


def test_a_held_frame_is_the_mean_of_the_key_frames_either_side_moved_to_it():
    before, after = grid(0), grid(1)
    flow = torch.zeros(6, 8, 2)
    flow[..., 0] = 1.0  # each cell of the next key frame was one cell to its right in the carried frame
    between = Between(lambda coarse: coarse * 10)  # what the refiner takes: told from the grid
    pending = between.hold(before.clone())
    assert not pending.ready
    between.resolve(after, flow)
    assert pending.ready
    expected = 0.5 * (before + warp_back(after, -flow))
    assert torch.allclose(pending.get(), expected * 10)
    # Moved back, the next key frame's column 0 lands on column 1 of the carried frame.
    assert torch.allclose(warp_back(after, -flow)[:, :, 1], after[:, :, 0])
    between.resolve(after, flow)  # nothing waits: nothing happens
    assert torch.allclose(pending.get(), expected * 10)


def test_without_a_key_frame_after_it_a_held_frame_takes_the_key_frame_before_alone():
    before = grid(0)
    between = Between(lambda coarse: coarse)
    first = between.hold(before)
    second = between.hold(grid(2))  # a second frame held: the first resolved alone
    assert first.ready and torch.equal(first.get(), before)
    assert not second.ready
    between.resolve()
    assert torch.equal(second.get(), grid(2))
    # Another object's channel since (a key frame with more slots): the frame before alone too.
    third = between.hold(before)
    between.resolve(grid(3, channels=3), torch.zeros(6, 8, 2))
    assert torch.equal(third.get(), before)


def test_a_pending_carried_frame_waits_for_its_probabilities_on_another_thread():
    pending = PendingProbs()
    carried = CarriedProbs(pending)
    assert not carried.ready
    got = []
    waiter = threading.Thread(target=lambda: got.append(carried.value()))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and not got  # still waiting
    pending.set(torch.ones(2, 3, 3))
    waiter.join(timeout=5)
    assert not waiter.is_alive() and torch.equal(got[0], torch.ones(2, 3, 3))
    assert CarriedProbs(torch.zeros(1)).ready


def run(tiny_model, config: SessionConfig, *, later: bool, frames: int = 6):
    """Each frame's refined probabilities: stepped ``later`` and refined in frame order as InOrder
    hands them on (and the step after which each was), or stepped and refined at once."""
    images, mask = clip(frames)
    session = VideoSession(tiny_model, config)
    if not later:
        return [session.step_batch([image], [mask if t == 0 else None])[0] for t, image in enumerate(images)]
    in_order = InOrder(session)
    outputs, ready_after = {}, {}
    for t, image in enumerate(images):
        (probs,) = session.step_batch([image], [mask if t == 0 else None], refine=False, later=True)
        in_order.add((t, image, probs), probs)
        for index, frame, p in in_order.ready():
            outputs[index], ready_after[index] = (p if index == 0 else session.refine(frame, p)), t
    for index, frame, p in in_order.finish():
        outputs[index], ready_after[index] = session.refine(frame, p), None
    return [outputs[t] for t in range(frames)], ready_after


def test_a_carried_frame_waits_for_the_next_key_frame_and_differs_from_the_key_frame_before_alone(tiny_model):
    (between, ready_after), alone = run(tiny_model, CONFIG, later=True), run(tiny_model, CONFIG, later=False)
    assert ready_after == {0: 0, 1: 2, 2: 2, 3: 4, 4: 4, 5: None}  # frame 5 has no key frame after it
    for t in (0, 2, 4):  # the frames the network sees are the same
        assert torch.allclose(between[t], alone[t].float(), atol=1e-6)
    for t in (1, 3):
        assert not torch.allclose(between[t], alone[t].float(), atol=1e-3)
    assert torch.allclose(between[5], alone[5].float(), atol=1e-6)  # the last one: the frame before alone


def test_carry_between_off_gives_the_key_frame_before_alone_later_too(tiny_model):
    config = CONFIG.with_overrides(carry_between=False)
    (later, ready_after), alone = run(tiny_model, config, later=True), run(tiny_model, config, later=False)
    assert ready_after == {t: t for t in range(6)}
    for t in range(6):
        assert torch.allclose(later[t], alone[t].float(), atol=1e-6)


def test_stopping_lets_a_thread_waiting_for_a_carried_frame_go_on(tiny_model):
    images, mask = clip(2)
    session = VideoSession(tiny_model, CONFIG)
    session.step_batch([images[0]], [mask], refine=False, later=True)
    (carried,) = session.step_batch([images[1]], None, refine=False, later=True)
    assert isinstance(carried, CarriedProbs) and not carried.ready
    waiter = threading.Thread(target=lambda: session.refine(images[1], carried))
    waiter.start()
    session.stop_waiting()  # the stepping thread stopped (an error, Ctrl-C)
    waiter.join(timeout=10)
    assert not waiter.is_alive() and carried.ready


def test_later_is_for_a_caller_that_refines_itself(tiny_model):
    images, mask = clip(1)
    with pytest.raises(VosError, match="refine=False"):
        VideoSession(tiny_model, CONFIG).step_batch([images[0]], [mask], later=True)


def test_segment_video_refines_as_the_cli_does(tiny_model):
    """engine.segment.segment_video (the training run's validation) gives the masks of stepping later
    and refining in frame order, its carried frames from both key frames."""
    from engine.segment import segment_video

    images, mask = clip(6)
    (between, _), alone = run(tiny_model, CONFIG, later=True), run(tiny_model, CONFIG, later=False)
    session = VideoSession(tiny_model, CONFIG)
    session.step(images[0], mask)  # its registry: the ids of the probabilities' channels
    masks = list(segment_video(tiny_model, images, mask, config=CONFIG))
    assert len(masks) == 6
    for t in range(6):
        assert (masks[t] == session.to_ids(between[t])).all()
    assert any((masks[t] != session.to_ids(alone[t])).any() for t in (1, 3))
