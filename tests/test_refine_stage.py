"""A frame carried whole takes the last output moved along the flow, not refined again
(engine.refine_stage), the same whether the session refines inline or the caller does, later and
in frame order (the CLI's refinement thread); a frame carried at the grid is refined by the learned
refiner alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config import SessionConfig
from engine.errors import VosError
from engine.motion import warp_frame
from engine.refine_stage import CarriedFrame, CarriedProbs, RefineStage
from engine.session import VideoSession
from tests.test_window import CARRYING, clip


class Sharpen:
    """A refiner that changes what it is given (so a refined output is told from an unrefined one)
    and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frame, probs):
        self.calls += 1
        sharp = probs**2
        return sharp / sharp.sum(0, keepdim=True)


def one_hot(mask: np.ndarray, channels: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(mask == k).float() for k in range(channels)])


def test_a_carried_frame_is_the_last_output_moved_along_the_flow_and_is_not_refined(tiny_model):
    images, mask = clip(8)
    moved = np.zeros_like(mask)
    moved[32:80, 48:96] = 1  # frame 2's mask: the square where it is then
    masks = [mask, None, moved, None, None, None, None, None]
    config = CARRYING.with_overrides(carry_motion=2.0)  # the square moves half a cell a frame
    refiner = Sharpen()
    session = VideoSession(tiny_model, config, refiner=refiner)
    outputs, flows = [], []
    for image, given in zip(images, masks, strict=True):
        outputs.append(session.step_batch([image], [given])[0])
        flows.append(session.propagator.pixel_flow)
    assert session.carried == 3  # frames 3, 5 and 7
    # frames 1, 4 and 6, and frame 2's prediction, which its mask is merged with
    assert refiner.calls == 4
    # frame 3 follows a frame given a mask: that mask moved; frames 5 and 7: the refined output before
    assert torch.allclose(outputs[3], warp_frame(one_hot(moved, 2), flows[3]), atol=1e-6)
    for i in (5, 7):
        assert torch.allclose(outputs[i], warp_frame(outputs[i - 1], flows[i]), atol=1e-6)

    # The CLI's way: stepped without refinement, refined a frame behind, in order.
    later = VideoSession(tiny_model, config, refiner=Sharpen())
    waiting: list[tuple[np.ndarray, object, bool]] = []
    results = []
    for image, given in zip(images, masks, strict=True):
        waiting.append((image, later.step_batch([image], [given], refine=False)[0], given is not None))
        if len(waiting) == 2:
            frame, probs, was_given = waiting.pop(0)
            results.append(probs if was_given else later.refine(frame, probs))
    frame, probs, was_given = waiting.pop(0)
    results.append(probs if was_given else later.refine(frame, probs))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results, outputs, strict=True))

    # Off: carried frames are the grid probabilities moved, upsampled and refined, as before.
    refiner = Sharpen()
    session = VideoSession(tiny_model, config.with_overrides(carry_refined=False), refiner=refiner)
    for image, given in zip(images, masks, strict=True):
        session.step_batch([image], [given])
    assert session.carried == 3 and refiner.calls == 4 + 3


def test_the_refine_stage_needs_an_output_before_a_carried_frame():
    stage = RefineStage(None)
    frame = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(VosError, match="carried"):
        stage(frame, CarriedFrame(torch.zeros(2, 3, 2)))
    probs = torch.rand(2, 4, 6)
    assert stage(frame, probs) is probs  # no refiner: unchanged
    assert torch.allclose(stage(frame, CarriedFrame(torch.zeros(2, 3, 2))), probs, atol=1e-5)


def test_the_carried_frames_refiner_takes_the_frames_carried_at_the_grid():
    full, learned = Sharpen(), Sharpen()
    stage = RefineStage(full, learned)
    probs = one_hot(np.eye(4, dtype=np.uint8), 2) * 0.8 + 0.1
    stage(None, probs)
    assert (full.calls, learned.calls) == (1, 0)
    assert torch.allclose(stage(None, CarriedProbs(probs)), learned(None, probs))
    assert (full.calls, learned.calls) == (1, 2)
    assert RefineStage(full).carried is full  # by default the same refiner
    assert torch.equal(RefineStage(None)(None, CarriedProbs(probs)), probs)  # no refiner: unchanged


def test_a_frame_carried_at_the_grid_skips_the_solver_and_nothing_else(tiny_model):
    """A frame carried at the grid is refined by the learned refiner alone (``carried_bilateral`` off,
    the defaults); the frames the network sees get the solver too, and their outputs are those of a
    session that sends carried frames through the solver as well. Every other frame carried (the
    fixed interval of ``fast``)."""
    assert not SessionConfig().carried_bilateral
    images, mask = clip(6)
    outputs = {}
    for solver in (False, True):
        config = SessionConfig(
            runtime="torch", half=False, min_size=0, max_size=384, carry_motion=0.0, carried_bilateral=solver
        )
        assert config.fixed_interval and not config.carry_refined and config.refine == "learned+bilateral"
        session = VideoSession(tiny_model, config)
        assert (session._stage.carried is session.refiner) == solver
        outputs[solver] = [session.step_batch([image], [mask if t == 0 else None])[0] for t, image in enumerate(images)]
        assert session.carried == 3  # frames 1, 3 and 5
    for t in (2, 4):  # the frames the network sees: refinement does not feed back into propagation
        assert torch.equal(outputs[False][t], outputs[True][t])
    for t in (1, 3, 5):
        assert not torch.equal(outputs[False][t], outputs[True][t])
