"""The network's box (engine.window): where it is, what the network sees, and that retrieval never
reads a cell outside it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import engine.window as window_module
from engine.embedder import FrameEmbedder
from engine.errors import VosError
from engine.model import coordinate_grid
from engine.session import SessionConfig, VideoSession
from engine.window import Box, covers, next_box

BOXED = SessionConfig(embed_context=2, refine="none", runtime="torch", half=False, min_size=0, keyframe_interval=1)


def grid_probs(objects: list[tuple[slice, slice]], grid=(32, 48), level: float = 1.0) -> torch.Tensor:
    """(K + 1, gh, gw) probabilities: each object ``level`` sure on its (rows, cols), background elsewhere."""
    probs = torch.zeros(len(objects) + 1, *grid)
    for k, (rows, cols) in enumerate(objects, start=1):
        probs[k, rows, cols] = level
    probs[0] = 1 - probs[1:].sum(0)
    return probs


def test_the_box_is_the_objects_grown_by_two_reaches_the_margin_and_the_context_on_whole_blocks():
    probs = grid_probs([(slice(10, 14), slice(20, 26))])
    grow = 2 * BOXED.prior_radius + BOXED.gate_margin + BOXED.embed_context  # 14 cells
    box = next_box(probs, BOXED)
    assert box == Box(0, 28, 4, 40)  # rows 10-14 -> 0..27 -> 0..28; cols 20-25 -> 6..39 -> 4..40
    assert box.y0 <= 10 - grow or box.y0 == 0
    assert all(v % 4 == 0 for v in (box.y0, box.y1, box.x0, box.x1))
    assert box.pixels() == (slice(0, 224), slice(32, 320))


def test_no_box_when_it_is_off_an_object_is_lost_or_it_would_cover_most_of_the_frame():
    probs = grid_probs([(slice(10, 14), slice(20, 26))])
    assert next_box(probs, BOXED.with_overrides(embed_context=0)) is None
    assert next_box(probs, BOXED.with_overrides(prior_gate=False)) is None
    assert next_box(grid_probs([(slice(10, 14), slice(20, 26))], level=0.3), BOXED) is None  # below prior_lost
    assert next_box(grid_probs([(slice(2, 4), slice(2, 4)), (slice(28, 30), slice(44, 46))]), BOXED) is None
    with pytest.raises(VosError, match="context"):
        SessionConfig(embed_context=-1)


def test_covers_asks_for_every_cell_of_the_region_inside_the_box():
    region = torch.zeros(32, 48, dtype=torch.bool)
    region[8:12, 8:12] = True
    assert covers(Box(4, 16, 4, 16), region)
    assert not covers(Box(4, 16, 4, 8), region)
    assert not covers(Box(0, 32, 0, 44), None)  # any cell: only the whole frame holds it
    assert covers(None, None) and covers(None, region)


def test_a_boxed_embedding_is_the_network_on_the_box_and_zero_keys_outside(tiny_model):
    embedder = FrameEmbedder(tiny_model, max_size=768, device=torch.device("cpu"), half=False, runtime="torch")
    image = np.random.default_rng(0).integers(0, 255, size=(256, 384, 3), dtype=np.uint8)
    box = Box(4, 20, 8, 24)
    (pixels,) = embedder.embed([image], [0.25], box)
    keys = pixels.keys.reshape(32, 48, -1).clone()
    crop = torch.from_numpy(image[box.pixels()].copy()).permute(2, 0, 1)[None].float()
    coords = coordinate_grid(32, 48, 0.25)[None, :, 4:20, 8:24]
    with torch.inference_mode():
        expected = tiny_model.embed_at(crop, coords)[0].permute(1, 2, 0)
    assert torch.allclose(keys[4:20, 8:24], expected, atol=1e-5)
    keys[4:20, 8:24] = 0
    assert not keys.any()
    assert torch.equal(pixels.coords, coordinate_grid(32, 48, 0.25).reshape(3, -1).T)
    with pytest.raises(VosError, match="one image"):
        embedder.embed([image, image], [0.0, 0.1], box)


def clip(frames: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    """A textured square drifting right over noise, and its first mask (256x384)."""
    rng = np.random.default_rng(3)
    background = rng.integers(0, 120, size=(256, 384, 3), dtype=np.uint8)
    patch = rng.integers(140, 255, size=(48, 48, 3), dtype=np.uint8)
    images = []
    for t in range(frames):
        image = background.copy()
        image[32:80, 40 + 4 * t : 88 + 4 * t] = patch
        images.append(image)
    mask = np.zeros((256, 384), dtype=np.uint8)
    mask[32:80, 40:88] = 1
    return images, mask


def test_a_session_embeds_later_frames_in_their_box_and_ahead_as_in_step(tiny_model, monkeypatch):
    """From the third frame on the network sees only the box; frames embedded ahead (the CLI's
    network thread) get the same boxes and the same probabilities."""
    images, mask = clip()
    seen: list[tuple[int, int]] = []
    real = FrameEmbedder._network

    def network(self, batch, coords):
        seen.append(tuple(batch.shape[-2:]))
        return real(self, batch, coords)

    monkeypatch.setattr(FrameEmbedder, "_network", network)
    inline, ahead = VideoSession(tiny_model, BOXED), VideoSession(tiny_model, BOXED)
    for i, image in enumerate(images):
        given = mask if i == 0 else None
        expected = inline.step_batch([image], [given])[0]
        got = ahead.step_batch([image], [given], embedded=[ahead.embed_ahead(image, i)])[0]
        assert torch.equal(got, expected)
    assert len(seen) == 2 * len(images)
    sizes = seen[::2]  # the inline session's
    assert sizes[:2] == [(256, 384)] * 2
    assert all(h * w < 256 * 384 for h, w in sizes[2:])
    assert inline.whole_again == ahead.whole_again == 0


def test_a_box_that_misses_a_cell_retrieval_needs_is_embedded_again_whole(tiny_model, monkeypatch):
    """A box too small for the gate's cells (here forced) gives way to the whole frame: the
    probabilities are those of a session without boxes."""
    images, mask = clip()
    monkeypatch.setattr(window_module, "next_box", lambda probs, config: Box(0, 4, 0, 4))
    boxed, whole = VideoSession(tiny_model, BOXED), VideoSession(tiny_model, BOXED.with_overrides(embed_context=0))
    for i, image in enumerate(images):
        given = mask if i == 0 else None
        assert torch.equal(boxed.step_batch([image], [given])[0], whole.step_batch([image], [given])[0])
    assert boxed.whole_again == len(images) - 2


def test_a_thread_embedding_ahead_waits_for_its_box_until_told_to_stop_waiting(tiny_model):
    """The network's thread waits for the frame two before its own; when the engine stops (an
    error), ``stop_waiting`` lets it finish, with the whole frame."""
    images, _ = clip()
    session = VideoSession(tiny_model, BOXED)
    done = []
    thread = threading.Thread(target=lambda: done.append(session.embed_ahead(images[4], 4)), daemon=True)
    thread.start()
    thread.join(timeout=0.3)
    assert thread.is_alive() and not done  # frame 2 is not done
    session.stop_waiting()
    thread.join(timeout=5)
    assert not thread.is_alive() and done[0].box is None and len(done[0].pixels) == 32 * 48


def test_a_thread_started_after_the_one_that_made_the_session_ended_still_waits(tiny_model):
    """The CLI makes the session on a thread that then ends; the network's thread, started after it,
    is usually given the ended thread's ident. It is not the stepping thread, so it waits for frame
    2's plan (before, it took the whole frame at once, and the masks changed from run to run)."""
    images, mask = clip()
    made = []
    maker = threading.Thread(target=lambda: made.append(VideoSession(tiny_model, BOXED)))
    maker.start()
    maker.join()
    session = made[0]
    done = []
    thread = threading.Thread(target=lambda: done.append(session.embed_ahead(images[2], 2)), daemon=True)
    thread.start()
    thread.join(timeout=0.3)
    assert thread.is_alive() and not done  # frame 0 is not done
    session.step_batch([images[0]], [mask])
    thread.join(timeout=5)
    assert done and done[0].box is not None  # the plan decided when frame 0 was done


def test_the_thread_that_steps_the_session_never_waits_for_a_box(tiny_model):
    """Embedding ahead on the stepping thread itself, for a frame whose box is not decided yet,
    would wait for a frame only that thread can step: it gets the whole frame at once."""
    images, mask = clip()
    session = VideoSession(tiny_model, BOXED)
    session.step_batch([images[0]], [mask])
    started = time.perf_counter()
    far = session.embed_ahead(images[4], 4)
    assert time.perf_counter() - started < 5 and far.box is None


def flow_of(length: float, grid=(32, 48)) -> torch.Tensor:
    """(gh, gw, 2) backward flow of ``length`` cells, along x."""
    flow = torch.zeros(*grid, 2)
    flow[..., 0] = length
    return flow


def test_motion_is_a_high_percentile_of_the_flow_over_the_objects_cells():
    probs = grid_probs([(slice(10, 20), slice(10, 20))])
    flow = flow_of(0.0)
    flow[10:20, 10:20, 1] = torch.linspace(0, 3, 100).reshape(10, 10)
    flow[0:5, 0:5, 0] = 50.0  # the background's motion does not count
    assert window_module.motion(flow, probs) == pytest.approx(float(torch.quantile(torch.linspace(0, 3, 100), 0.9)))
    assert window_module.motion(None, probs) is None
    assert window_module.motion(flow, grid_probs([])) is None


CARRYING = BOXED.with_overrides(keyframe_interval=2, carry_motion=1.0, carry_refined=True)


def plans(config: SessionConfig, moves: list[float | None], *, enabled: bool = True) -> list[bool]:
    """Whether the network sees frames 0, 1, ... when the objects move ``moves[p]`` cells into frame p."""
    schedule = window_module.FrameSchedule(config, enabled=enabled)
    probs = grid_probs([(slice(10, 14), slice(20, 26))])
    keys = []
    for position, moved in enumerate(moves):
        keys.append(schedule.plan_for(position).key)
        schedule.frame_done(position, probs, None if moved is None else flow_of(moved))
    return keys


def test_a_frame_is_carried_only_where_the_objects_moved_little_two_frames_before_and_never_twice_in_a_row():
    slow = [None] + [0.5] * 9
    assert plans(CARRYING, slow) == [True, True, True, False, True, False, True, False, True, False]
    fast = [None] + [2.0] * 9
    assert plans(CARRYING, fast) == [True] * 10
    # frame 5 is planned when frame 3 is done: its fast motion makes frame 5 a key frame
    mixed = [None, 0.5, 0.5, 2.0, 0.5, 0.5, 0.5]
    assert plans(CARRYING, mixed) == [True, True, True, False, True, True, False]
    # an interval of three carries up to two frames in a row
    assert plans(CARRYING.with_overrides(keyframe_interval=3), slow)[:7] == [
        True,
        True,
        True,
        False,
        False,
        True,
        False,
    ]
    # off: the motion rule at 0, an interval of 1, or no schedule (a GPU)
    for config, enabled in (
        (CARRYING.with_overrides(carry_motion=0.0), True),
        (CARRYING.with_overrides(keyframe_interval=1), True),
        (CARRYING, False),
    ):
        assert plans(config, slow, enabled=enabled) == [True] * 10
    with pytest.raises(VosError, match="motion"):
        SessionConfig(carry_motion=-1.0)


def test_key_frames_are_chosen_every_frame_by_motion_or_by_a_fixed_interval():
    fixed = CARRYING.with_overrides(carry_motion=0.0, keyframe_interval=3)
    every = CARRYING.with_overrides(keyframe_interval=1)
    assert (CARRYING.carries_by_motion, CARRYING.fixed_interval) == (True, False)
    assert (fixed.carries_by_motion, fixed.fixed_interval) == (False, True)
    assert (every.carries_by_motion, every.fixed_interval) == (False, False)
    # a fixed interval lists every third frame after the last key frame, and annotated frames, up front
    schedule = window_module.FrameSchedule(fixed)
    assert schedule.batch_keys([True, False, False, False, True, False]) == [0, 3, 4]
    assert schedule.batch_keys([False, False, False]) == [1]
    # otherwise every frame is listed, and the plans decide (by motion) which are carried
    for config in (CARRYING, every):
        assert window_module.FrameSchedule(config).batch_keys([True, False, False]) == [0, 1, 2]
        assert window_module.FrameSchedule(config).carrying == config.carries_by_motion
    assert not window_module.FrameSchedule(CARRYING, enabled=False).carrying  # a GPU sees every frame


def test_frames_carried_ahead_are_not_embedded_and_give_the_probabilities_of_a_session_run_frame_by_frame(
    tiny_model, monkeypatch
):
    """The CLI's network thread skips the frames the schedule carries; the probabilities are those
    of a session stepped frame by frame, which carries the same frames. A frame given a mask is
    seen, carried by its plan or not."""
    images, mask = clip(8)
    later = np.zeros_like(mask)
    later[150:200, 200:260] = 2
    masks = [mask, None, None, None, None, later, None, None]
    calls = []
    real = FrameEmbedder._network

    def network(self, batch, coords):
        calls.append(1)
        return real(self, batch, coords)

    monkeypatch.setattr(FrameEmbedder, "_network", network)
    config = CARRYING.with_overrides(carry_motion=2.0)  # the square moves half a cell a frame
    inline, ahead = VideoSession(tiny_model, config), VideoSession(tiny_model, config)
    carried_ahead = 0
    for i, (image, given) in enumerate(zip(images, masks, strict=True)):
        expected = inline.step_batch([image], [given])[0]
        before = len(calls)
        item = ahead.embed_ahead(image, i)
        carried_ahead += item.pixels is None
        assert (len(calls) == before) == (item.pixels is None)
        assert torch.equal(ahead.step_batch([image], [given], embedded=[item])[0], expected)
    assert inline.carried == ahead.carried == 2  # frames 3 and 7; frame 5, planned so, has a mask
    assert carried_ahead == 3  # the network's thread does not know of frame 5's mask: the step embeds it
    assert (inline.to_ids(expected) == 2).any()
    never = VideoSession(tiny_model, config.with_overrides(carry_motion=0.01))
    for i, image in enumerate(images):
        never.step_batch([image], [mask if i == 0 else None])
    assert never.carried == 0
