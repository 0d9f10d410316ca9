"""Thin parts an annotation shows far from its object's body (a kite's lines) are followed at the
frame's own resolution after the refiners (engine.thin_parts): they come back where the grid lost
them, and only where they still reach the object."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.config import SessionConfig
from engine.refine_stage import RefineStage
from engine.session import VideoSession
from engine.thin_parts import ThinParts

SIZE = (480, 640)
CENTRE = (320, 300)  # (x, y) of the object's body


def one_hot(ids: np.ndarray, channels: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(ids == k).float() for k in range(channels)])


def scene(shift: int = 0, gap: int = 0, line: bool = True, noise: float = 3.0, seed: int = 0):
    """A light disc on a smooth background with a dark line, one or two pixels wide, from its edge up
    and to the right (its far end moved ``shift`` pixels right; starting ``gap`` pixels off the
    disc). Returns the RGB frame, the disc's mask and the line's."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    ramp = np.linspace(150, 200, w, dtype=np.float32)[None, :].repeat(h, 0)
    image = ramp + rng.normal(0, noise, size=(h, w)).astype(np.float32)
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, CENTRE, 60, 1, -1)
    image[disc > 0] = 230
    lines = np.zeros((h, w), np.uint8)
    if line:
        start = (CENTRE[0] + 40 + gap, CENTRE[1] - 45 - gap)
        cv2.line(lines, start, (CENTRE[0] + 240 + shift, CENTRE[1] - 240), 1, 1)
        lines &= 1 - disc
        image[lines > 0] = 60
    frame = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(frame[..., None], 3, axis=2), disc.astype(bool), lines.astype(bool)


def annotated():
    """The first frame and its annotation, which draws the line a pixel wider on each side than it
    is, as annotators do."""
    frame, disc, line = scene()
    wide = cv2.dilate(line.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return frame, one_hot((disc | wide).astype(np.uint8), 2)


def test_a_line_the_grid_lost_comes_back_and_follows_its_move():
    thin = ThinParts()
    thin.start(*annotated())
    assert thin.active
    for shift in (3, 6, 9):  # the line's end moves 3 pixels a frame; the refiners kept the disc alone
        frame, disc, line = scene(shift=shift)
        out = thin(frame, one_hot(disc.astype(np.uint8), 2))
        ids = out.argmax(0).numpy()
        assert (ids[disc] == 1).all()
        found = ids[line] == 1
        assert found.mean() > 0.8, found.mean()
        extra = (ids == 1) & ~disc & ~cv2.dilate(line.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert extra.sum() < 0.05 * line.sum()


def test_a_line_cut_off_from_the_object_joins_only_where_its_thin_part_was_and_only_when_long():
    thin = ThinParts()
    thin.start(*annotated())
    # Cut off by 8 pixels (as bright lines hang from a dark bar no response finds): it lies on the
    # object's thin part of the frame before, and is long, so it still joins.
    frame, disc, line = scene(gap=8)
    ids = thin(frame, one_hot(disc.astype(np.uint8), 2)).argmax(0).numpy()
    assert (ids[line] == 1).mean() > 0.8
    # A short piece cut off does not.
    frame, disc, line = scene(gap=8)
    plain, _, _ = scene(line=False)
    far_rows = np.arange(SIZE[0])[:, None] <= np.nonzero(line)[0].max() - 20  # all but the 20 rows nearest the disc
    frame[line & far_rows] = plain[line & far_rows]
    thin = ThinParts()
    thin.start(*annotated())
    probs = one_hot(disc.astype(np.uint8), 2)
    assert torch.equal(thin(frame, probs), probs)
    # Nor does a long one beyond the reach of the thin part before (40 pixels to its right).
    thin = ThinParts()
    thin.start(*annotated())
    frame, disc, line = scene(gap=8)
    plain, _, _ = scene(line=False)
    moved = np.roll(line, 40, axis=1)
    frame = plain.copy()
    frame[moved] = 60
    assert torch.equal(thin(frame, probs), probs)


def test_an_object_without_a_thin_part_far_from_its_body_is_not_followed():
    frame, disc, _ = scene(line=False)
    thin = ThinParts()
    thin.start(frame, one_hot(disc.astype(np.uint8), 2))
    assert not thin.active
    later, disc, _ = scene()  # a line appears beside it: not the object's
    probs = one_hot(disc.astype(np.uint8), 2)
    assert thin(later, probs) is probs


def test_a_textured_background_is_not_taken_for_the_line():
    thin = ThinParts()
    thin.start(*annotated())
    # Strong noise: much of the region around the line responds like it.
    frame, disc, _ = scene(shift=3, noise=40.0, seed=1)
    probs = one_hot(disc.astype(np.uint8), 2)
    assert torch.equal(thin(frame, probs), probs)


def test_pixels_of_another_object_stay_that_objects():
    frame, probs = annotated()
    thin = ThinParts()
    thin.start(frame, torch.cat([probs, torch.zeros_like(probs[:1])]))  # object 2 not on this frame
    later, disc, line = scene(shift=3)
    ids = disc.astype(np.uint8)
    ys, xs = np.nonzero(line)
    other = np.zeros_like(line)
    other[ys.min() : ys.min() + 60] = True  # the line's far end lies under object 2
    other &= ~disc
    ids[other] = 2
    out = thin(later, one_hot(ids, 3)).argmax(0).numpy()
    assert (out[other] == 2).all()
    assert (out[line & ~other] == 1).mean() > 0.7


def test_the_refine_stage_follows_thin_parts_from_each_given_frame():
    stage = RefineStage(None, thin=ThinParts())
    frame, disc, line = scene(shift=3)
    probs = one_hot(disc.astype(np.uint8), 2)
    assert torch.equal(stage(frame, probs), probs)  # nothing given yet: nothing followed
    stage.given(*annotated())
    ids = stage(frame, probs).argmax(0).numpy()
    assert (ids[line] == 1).mean() > 0.8
    # A later given frame without the line: nothing is followed from then on.
    plain, disc0, _ = scene(line=False)
    stage.given(plain, one_hot(disc0.astype(np.uint8), 2))
    assert torch.equal(stage(frame, probs), probs)


def test_the_setting_switches_it_off(tiny_model):
    frame, probs = annotated()
    later, disc, line = scene(shift=3)
    lost = one_hot(disc.astype(np.uint8), 2)
    outputs = {}
    for on in (True, False):
        config = SessionConfig(runtime="torch", half=False, max_size=256, thin_parts=on)
        session = VideoSession(tiny_model, config, refiner=lambda f, p: p)
        (given,) = session.step_batch([frame], [probs[1].numpy().astype(np.uint8)], refine=False)
        session.output(frame, given, given=True)
        outputs[on] = session.refine(later, lost)
    assert (outputs[True].argmax(0).numpy()[line] == 1).mean() > 0.8
    assert torch.equal(outputs[False], lost)


def test_a_session_stepping_and_refining_at_once_follows_them_from_its_first_mask(tiny_model):
    frame, probs = annotated()
    later, disc, line = scene(shift=3)
    lost = one_hot(disc.astype(np.uint8), 2)  # what the refiners leave: the disc alone
    config = SessionConfig(runtime="torch", half=False, max_size=256, keyframe_interval=1)
    session = VideoSession(tiny_model, config, refiner=lambda f, p: lost)
    session.step(frame, probs[1].numpy().astype(np.uint8))
    ids = session.to_ids(session.step(later))
    assert (ids[line] == 1).mean() > 0.8
