"""Keys projected onto the principal directions of the frames that introduced objects
(``project_dim``): cheaper retrieval, and objects given on a later frame keep their own directions."""

from __future__ import annotations

import numpy as np
import torch

from engine.memory import PixelSet
from engine.propagation import Propagator
from engine.session import SessionConfig, VideoSession


def test_projection_keeps_retrieval_close_to_the_full_embedding(tiny_model):
    """Projected onto the first frame's principal directions, the keys shrink and labels barely change."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 1
    # The whole grid in the bank (bank_stride=1): only the projection differs between the two.
    full = VideoSession(tiny_model, SessionConfig(refine="none", online=False, bank_stride=1))
    small = VideoSession(tiny_model, SessionConfig(refine="none", online=False, project_dim=12, bank_stride=1))
    for session in (full, small):
        session.step(frame, mask)
    assert small.propagator._projection.shape == (full.bank.pixels().keys.shape[1], 12)
    moved = np.roll(frame, 3, axis=1)
    agree = (full.to_ids(full.step(moved)) == small.to_ids(small.step(moved))).mean()
    assert agree > 0.9


def test_only_the_gated_cells_are_projected_and_the_memory_keeps_projected_keys(tiny_model, monkeypatch):
    """With the gate, the cells no object can reach are never projected (they are not retrieved,
    so projecting them is wasted work); what joins the memory has the projection's width."""
    frame = np.full((96, 128, 3), 40, np.uint8)
    frame[24:56, 16:48] = (220, 60, 30)
    mask = np.zeros((96, 128), np.uint8)
    mask[24:56, 16:48] = 1
    session = VideoSession(
        tiny_model,
        SessionConfig(
            refine="none",
            project_dim=12,
            prior_gate=True,
            gate_margin=0,
            prior_flow=False,
            memory_threshold=0.5,
            bank_stride=1,
            interior_stride=1,
            keyframe_interval=1,
        ),
    )
    projected: list[int] = []
    real = Propagator._project
    monkeypatch.setattr(Propagator, "_project", lambda self, p: projected.append(len(p)) or real(self, p))
    session.step(frame, mask)
    assert projected == []  # the reference only fits the directions
    session.step(frame)
    cells = len(session.bank)  # the whole grid of the annotated frame
    limit = session.config.memory_per_frame
    assert 0 < projected[0] < cells  # the frame's query: only the cells near the object
    assert projected[1] == cells  # the bank, once
    assert len(projected) == 3 and 0 < projected[2] <= limit  # the pixels joining the memory
    session.step(frame)
    # this frame's query and memory pixels only: the projected bank is cached
    assert len(projected) == 5 and projected[3] < cells and projected[4] <= limit
    assert len(session.memory) > 0
    assert session.memory.pixels().keys.shape[1] == 12


def _frame(rng, objects: dict[int, int], dim: int = 8, side: int = 8):
    """Unit keys on a side x side grid: the background along axis 0, object ``o`` (rows o*2 and
    o*2 + 1 of the grid) along axis ``objects[o]``, all with a little noise; and its id mask."""
    mask = np.zeros((side, side), np.uint8)
    keys = torch.zeros(side * side, dim)
    keys[:, 0] = 1.0
    for object_id, axis in objects.items():
        mask[2 * object_id : 2 * object_id + 2] = object_id
        keys[torch.from_numpy(mask.reshape(-1) == object_id)] = torch.eye(dim)[axis]
    keys = torch.nn.functional.normalize(keys + 0.05 * torch.from_numpy(rng.standard_normal(keys.shape)).float(), dim=1)
    coords = torch.zeros(side * side, 3)
    return PixelSet(keys, coords, torch.zeros(side * side, dtype=torch.long)), mask


def test_an_object_given_later_refits_the_projection_and_keeps_its_directions():
    """The frame that introduces object 2, whose keys lie outside the first frame's principal
    directions, refits them (and empties the memory, whose keys had the old ones): object 2's
    keys then survive the projection, where the first frame's directions lose them."""
    rng = np.random.default_rng(0)
    propagator = Propagator(SessionConfig(refine="none", project_dim=3, memory_threshold=0.5), torch.device("cpu"))
    pixels, mask = _frame(rng, {1: 1})
    propagator.reference(pixels, mask, (8, 8))
    before = propagator._projection.clone()
    propagator.propagate(_frame(rng, {1: 1})[0], (8, 8), None)
    assert len(propagator.memory) > 0
    pixels, mask = _frame(rng, {1: 1, 2: 5})
    propagator.reference(pixels, mask, (8, 8))
    after = propagator._projection
    assert len(propagator.memory) == 0
    keys = pixels.keys[torch.from_numpy(mask.reshape(-1) == 2)]

    def kept(projection):  # the share of the keys' energy inside the projection's span
        return float((keys @ projection).square().sum() / keys.square().sum())

    assert kept(before) < 0.1 and kept(after) > 0.8
    labels = propagator.propagate(_frame(rng, {1: 1, 2: 5})[0], (8, 8), None).argmax(0)
    assert (labels.numpy() == mask).mean() > 0.9


def test_projection_fitted_in_float32_spans_the_principal_directions():
    """The fit sums k k^T in float32 and takes its eigenvectors in float32 (a quicker first frame):
    dot products of keys projected onto them match those onto float64 principal directions."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(10.0, 0.01, 48)  # a spectrum falling over three decades, as real keys' does
    keys = torch.from_numpy((rng.standard_normal((3000, 48)) * scales) @ np.linalg.qr(rng.standard_normal((48, 48)))[0])
    keys = torch.nn.functional.normalize(keys, dim=1).float()
    propagator = Propagator(SessionConfig(project_dim=16), torch.device("cpu"))
    propagator._fit_projection(keys)
    exact = torch.linalg.eigh(keys.double().T @ keys.double())[1][:, -16:]
    projection = propagator._projection
    assert projection.dtype == torch.float32 and projection.shape == (48, 16)
    sample = keys[::10].double()
    fitted = (sample @ projection.double()) @ (sample @ projection.double()).T
    reference = (sample @ exact) @ (sample @ exact).T
    assert (fitted - reference).abs().max() < 1e-4
    # a second introducing frame adds to the sum: the fit is that of both frames' keys together
    more = torch.nn.functional.normalize(torch.randn(500, 48), dim=1)
    propagator._fit_projection(more)
    both = torch.cat([keys, more]).double()
    exact = torch.linalg.eigh(both.T @ both)[1][:, -16:]
    assert torch.linalg.svdvals(exact.T @ propagator._projection.double()).min() > 0.999
