"""The network a frame ahead: frames embedded on a thread of their own while the session propagates
the frames before them (vosctl.pipeline), so that the network no longer waits for retrieval, nor
retrieval for the network.

The session (engine.session) keeps the stepping side; this module is the embedding side and the
checks that an embedding handed back to the session is the one its frame needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import VosError
from engine.memory import PixelSet
from engine.window import Box, FrameSchedule


@dataclass(frozen=True)
class Embedded:
    """A frame embedded ahead (:meth:`AheadEmbedder.embed`) for the session's frame ``position``."""

    position: int
    pixels: PixelSet | None  # None: a frame the schedule carries (engine.window)
    small: np.ndarray  # the frame at the network's input size (its optical flow is taken there)
    box: Box | None = None  # the part of the grid the network saw (engine.window); None: all of it


class AheadEmbedder:
    """Embeds the frames of one session ahead of it, each as its schedule plans it, with the
    session's own steps: ``prepare(frame) -> small`` (the frame at the network's input size) and
    ``embed(small, position, box) -> pixels`` (embedded and timed)."""

    def __init__(
        self,
        prepare: Callable[[np.ndarray], np.ndarray],
        embed: Callable[[np.ndarray, int, Box | None], PixelSet],
        schedule: FrameSchedule,
    ) -> None:
        self.prepare = prepare
        self.embed_small = embed
        self.schedule = schedule

    def embed(self, frame: np.ndarray, position: int) -> Embedded:
        """The session's ``position``-th frame, embedded in its planned box; with a schedule it
        waits until the frame two before ``position`` is stepped. A frame the plan carries is not
        embedded (``pixels`` None)."""
        small = self.prepare(frame)
        plan = self.schedule.plan_for(position, wait=True)
        if not plan.key:
            return Embedded(position, None, small)
        return Embedded(position, self.embed_small(small, position, plan.box), small, plan.box)


def check_embedded(embedded: Sequence[Embedded], first: int, count: int) -> None:
    """Embeddings given for ``count`` frames from the session's frame ``first``: one per frame, each
    for the frame's own position (its time enters the embedding)."""
    if len(embedded) != count:
        raise VosError("step_batch needs one embedding per frame.")
    for offset, item in enumerate(embedded):
        if item.position != first + offset:
            raise VosError(f"An embedding for frame {item.position} was given for frame {first + offset}.")
