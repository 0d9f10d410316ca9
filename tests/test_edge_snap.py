"""Labels near a boundary are snapped to the frame's own edges after the refiners (engine.edge_snap):
a boundary the refiners placed a few pixels off moves to the edge between two colours, only within
the band around the boundary, and each object keeps its own pixels."""

from __future__ import annotations

import numpy as np
import torch

from engine.config import SessionConfig
from engine.edge_snap import EdgeSnap, SnapParams
from engine.refine_stage import CarriedFrame, RefineStage
from engine.session import VideoSession

SIZE = (480, 640)


def one_hot(ids: np.ndarray, channels: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(ids == k).float() for k in range(channels)])


def squares(noise: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame with a red square (object 1) and a blue one (object 2) side by side, touching
    along x = 320. Returns the RGB frame and its true ids."""
    rng = np.random.default_rng(seed)
    image = np.full((*SIZE, 3), 128.0, np.float32) + rng.normal(0, noise, (*SIZE, 3)).astype(np.float32)
    truth = np.zeros(SIZE, np.uint8)
    truth[160:320, 200:320] = 1
    truth[160:320, 320:440] = 2
    image[truth == 1] = (200, 40, 40)
    image[truth == 2] = (40, 40, 200)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_a_boundary_a_few_pixels_off_moves_to_the_edge():
    image, truth = squares()
    ids = truth.copy()
    ids[160:320, 200:203] = 0  # object 1 starts 3 pixels late on the left
    ids[318:320, 200:320] = 0  # and ends 2 pixels early at the bottom
    ids[160:320, 440:443] = 2  # object 2 spills 3 pixels into the background on the right
    out = EdgeSnap()(image, one_hot(ids, 3)).argmax(0).numpy()
    assert (ids != truth).sum() > 900
    assert (out != truth).sum() < 0.05 * (ids != truth).sum()


def test_objects_keep_their_own_pixels_across_a_shared_boundary():
    image, truth = squares()
    ids = truth.copy()
    ids[160:320, 316:320] = 2  # object 2 took a 4-pixel strip of object 1
    out = EdgeSnap()(image, one_hot(ids, 3)).argmax(0).numpy()
    assert (out[160:320, 316:320] == 1).mean() >= 0.5  # half the strip or more goes back to object 1
    assert (out[truth == 1] != 0).all() and (out[truth == 2] == 2).all()  # no pixel of either is lost


def test_only_pixels_within_the_band_change():
    image, truth = squares()
    ids = (truth > 0).astype(np.uint8)
    ids[160:320, 196:200] = 1  # 4 pixels of background taken on the left
    rows = slice(170, 310)  # away from the top and bottom edges' own bands
    wide = EdgeSnap(SnapParams(band=20))(image, one_hot(ids, 2)).argmax(0).numpy() != ids
    assert wide[rows, 198:200].any()  # the filter alone would take back all 4
    changed = EdgeSnap(SnapParams(band=2))(image, one_hot(ids, 2)).argmax(0).numpy() != ids
    assert changed[rows, 196:198].mean() > 0.9  # the band's pixels move to the edge
    assert not changed[rows, 198:200].any()  # those beyond it keep their label, wrong as it is
    assert not changed[:, :192].any() and not changed[rows, 202:436].any()


def test_a_frame_without_objects_passes_unchanged():
    image, _ = squares()
    probs = one_hot(np.zeros(SIZE, np.uint8), 2)
    assert EdgeSnap()(image, probs) is probs


def test_the_stage_snaps_before_it_follows_thin_parts():
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __call__(self, frame, probs):
            calls.append(self.name)
            return probs

    stage = RefineStage(None, thin=Recorder("thin"), snap=Recorder("snap"))
    stage(np.zeros((*SIZE, 3), np.uint8), torch.zeros(2, *SIZE))
    assert calls == ["snap", "thin"]
    calls.clear()  # a frame carried whole is not refined again: not snapped either
    stage(np.zeros((*SIZE, 3), np.uint8), CarriedFrame(torch.zeros(*SIZE, 2)))
    assert calls == ["thin"]


def test_the_setting_switches_it_off(tiny_model):
    image, truth = squares()
    ids = truth.copy()
    ids[160:320, 200:203] = 0
    late = one_hot(ids, 3)  # what the refiners leave: object 1 three pixels short
    outputs = {}
    for on in (True, False):
        config = SessionConfig(runtime="torch", half=False, max_size=256, edge_snap=on, thin_parts=False)
        session = VideoSession(tiny_model, config, refiner=lambda f, p: p)
        (given,) = session.step_batch([image], [truth], refine=False)
        session.output(image, given, given=True)
        outputs[on] = session.refine(image, late)
    assert (outputs[True].argmax(0).numpy()[160:320, 200:203] == 1).mean() > 0.95
    assert torch.equal(outputs[False], late)
