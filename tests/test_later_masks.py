"""Masks on any frame, in the engine: new objects that enter later, corrections, the bounded bank, backwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.factory import build_model
from engine.memory import PixelSet, ReferenceBank
from engine.metrics import jaccard
from engine.objects import merge_annotation
from engine.session import VideoSession, session_config_for

from .conftest import davis_frames, davis_masks

SIZE = (128, 72)


def small_masks(root, sequence, count):
    import cv2

    return [
        cv2.resize(m.astype(np.uint8), SIZE, interpolation=cv2.INTER_NEAREST)
        for m in davis_masks(root, sequence, count)
    ]


@pytest.fixture(scope="module")
def shipped():
    return build_model()


def session_for(model, **overrides) -> VideoSession:
    return VideoSession(model, session_config_for(model, max_size=128, **overrides))


def test_merge_replaces_the_given_ids_and_keeps_the_others():
    predicted = np.array([[1, 1, 2, 2], [0, 1, 2, 0]], dtype=np.uint8)
    given = np.array([[0, 0, 0, 1], [0, 0, 3, 0]], dtype=np.uint8)
    # id 1 moves to where the mask puts it, id 2 keeps its prediction except under the mask, 3 is new
    assert merge_annotation(predicted, given).tolist() == [[0, 0, 2, 1], [0, 0, 3, 0]]


def test_bank_keeps_frames_that_introduced_objects_and_only_the_recent_corrections():
    bank = ReferenceBank(recent=2)

    def frame(label):
        return PixelSet(torch.zeros(3, 2), torch.zeros(3, 3), torch.full((3,), label))

    bank.add(frame(1), permanent=True)
    for label in range(2, 8):
        bank.add(frame(label), permanent=False)
    bank.add(frame(9), permanent=True)
    assert bank.frames == 4 and len(bank) == 12
    assert sorted(set(bank.pixels().labels.tolist())) == [1, 6, 7, 9]


def test_an_object_first_given_later_is_absent_before_and_tracked_after(davis_root, shipped, one_torch_thread):
    """Two objects built from one training sequence: the bus's left and right halves; the right half
    is blanked in the first annotation and given first at frame 6."""
    frames = davis_frames(davis_root, "bus", 14, SIZE)
    truth = small_masks(davis_root, "bus", 14)
    columns = np.nonzero(truth[0].any(axis=0))[0]
    middle = (columns.min() + columns.max()) // 2

    def two_objects(mask):
        ids = mask.astype(np.uint8)
        ids[:, middle:] *= 2
        return ids

    first = two_objects(truth[0])
    first[first == 2] = 0
    later = 6
    session = session_for(shipped)
    outputs = []
    for index, frame in enumerate(frames):
        mask = first if index == 0 else two_objects(truth[later]) if index == later else None
        outputs.append(session.to_ids(session.step(frame, mask)))
    assert session.registry.ids == [1, 2]
    assert all(not (ids == 2).any() for ids in outputs[:later])
    assert np.array_equal(outputs[later], two_objects(truth[later]))
    for ids, gt in zip(outputs[later + 1 :], truth[later + 1 :], strict=True):
        assert (ids == 2).sum() > 0.4 * (two_objects(gt) == 2).sum()
        assert jaccard(ids > 0, gt > 0) > 0.7


def test_a_correction_mends_a_drifting_track(davis_root, shipped, one_torch_thread):
    """A first mask shifted off the object makes the track wrong; the true mask at frame 5 mends it."""
    frames = davis_frames(davis_root, "bear", 15, SIZE)
    truth = small_masks(davis_root, "bear", 15)
    wrong = np.roll(truth[0], 40, axis=1)
    fix = 5

    def run(corrected: bool) -> list[float]:
        session = session_for(shipped)
        scores = []
        for index, frame in enumerate(frames):
            mask = wrong if index == 0 else truth[fix] if corrected and index == fix else None
            ids = session.to_ids(session.step(frame, mask))
            scores.append(jaccard(ids > 0, truth[index] > 0))
        return scores

    drifting, mended = run(False), run(True)
    assert mended[fix] == 1.0
    assert np.mean(mended[fix + 1 :]) > 0.7
    assert np.mean(mended[fix + 1 :]) > np.mean(drifting[fix + 1 :]) + 0.3


def test_a_correction_of_one_object_keeps_the_other_objects_prediction(tiny_model):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    first = np.zeros((48, 64), np.uint8)
    first[5:20, 5:20], first[25:40, 40:60] = 1, 2
    # every frame seen: a frame given a mask is always seen, so the tracked one must be too
    tracked, corrected = session_for(tiny_model, keyframe_interval=1), session_for(tiny_model, keyframe_interval=1)
    tracked.step(frame, first)
    corrected.step(frame, first)
    predicted = tracked.to_ids(tracked.step(frame))
    correction = np.zeros_like(first)
    correction[30:45, 2:12] = 1
    out = corrected.to_ids(corrected.step(frame, correction))
    assert np.array_equal(out == 1, correction == 1)
    assert np.array_equal(out[correction == 0] == 2, predicted[correction == 0] == 2)
    session = corrected
    assert session.bank.frames == 2


def test_backwards_is_a_new_session_given_the_frames_in_reverse(davis_root, shipped, one_torch_thread):
    frames = davis_frames(davis_root, "bus", 13, SIZE)
    truth = small_masks(davis_root, "bus", 13)
    middle = 6
    forward, backward = session_for(shipped), session_for(shipped)
    after = [
        forward.to_ids(forward.step(f, truth[middle] if i == middle else None))
        for i, f in enumerate(frames)
        if i >= middle
    ]
    before = [
        backward.to_ids(backward.step(frames[i], truth[middle] if i == middle else None)) for i in range(middle, -1, -1)
    ]
    j_after = np.mean([jaccard(ids > 0, truth[middle + i] > 0) for i, ids in enumerate(after)])
    j_before = np.mean([jaccard(ids > 0, truth[middle - i] > 0) for i, ids in enumerate(before)])
    assert j_after > 0.7 and j_before > 0.7
