"""Keys projected onto the first frame's principal directions (``project_dim``): cheaper retrieval."""

from __future__ import annotations

import numpy as np

from engine.propagation import Propagator
from engine.session import SessionConfig, VideoSession


def test_projection_keeps_retrieval_close_to_the_full_embedding(tiny_model):
    """Projected onto the first frame's principal directions, the keys shrink and labels barely change."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 1
    full = VideoSession(tiny_model, SessionConfig(refine="none", online=False))
    small = VideoSession(tiny_model, SessionConfig(refine="none", online=False, project_dim=12))
    for session in (full, small):
        session.step(frame, mask)
    assert small.bank.pixels().keys.shape[1] == 12 < full.bank.pixels().keys.shape[1]
    moved = np.roll(frame, 3, axis=1)
    agree = (full.to_ids(full.step(moved)) == small.to_ids(small.step(moved))).mean()
    assert agree > 0.9


def test_only_the_gated_cells_are_projected_and_the_memory_keeps_projected_keys(tiny_model, monkeypatch):
    """With the gate, the cells no object can reach are never projected (they are not retrieved,
    so projecting them is wasted work); what joins the memory has the bank's width."""
    frame = np.full((96, 128, 3), 40, np.uint8)
    frame[24:56, 16:48] = (220, 60, 30)
    mask = np.zeros((96, 128), np.uint8)
    mask[24:56, 16:48] = 1
    session = VideoSession(
        tiny_model,
        SessionConfig(
            refine="none", project_dim=12, prior_gate=True, gate_margin=0, prior_flow=False, memory_threshold=0.5
        ),
    )
    projected: list[int] = []
    real = Propagator._project
    monkeypatch.setattr(Propagator, "_project", lambda self, p, **kw: projected.append(len(p)) or real(self, p, **kw))
    session.step(frame, mask)
    session.step(frame)
    cells = len(session.bank)  # the whole grid of the annotated frame
    assert projected[0] == cells  # the reference: every cell, to fit the projection
    assert 0 < projected[1] < cells  # the next frame: only the cells near the object
    assert len(session.memory) > 0
    assert session.memory.pixels().keys.shape[1] == session.bank.pixels().keys.shape[1] == 12
