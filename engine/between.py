"""A frame carried between two key frames takes both of them.

With every other frame a key frame (the defaults then), a carried frame's probabilities were the key
frame before it moved along the optical flow: wherever the objects moved fast, it lagged behind
them. Over the five folds of the cross-validation (seed-0 fold models, H.264 copy) the carried
frames scored J 0.836 against the key frames' 0.865, losing most on the fast movers (dog-agility
-16.5, mallard-fly -15, breakdance-flare -10).

Now the carried frame waits for the next key frame, and its grid probabilities are the mean of the
key frame before it moved forward and the key frame after it moved back (along the flow into that
key frame, negated: no optical flow more). CV J&F 0.8425 -> 0.8505 (27 of 30 sequences better); the
flow taken the other way exactly, one more optical flow a carried frame, scored 0.8511, within what
the seeds move (README, thirty-first round).

The carried frame's refinement must then wait for the next key frame to be stepped: its
probabilities are a :class:`PendingProbs` until then. Callers that step with ``refine=False`` and
refine later, in frame order, allow it (``VideoSession.step_batch(..., later=True)``), with
:class:`InOrder` handing on the frames whose turn has come: the CLI (to its refining thread),
``vosctl eval`` and the backward pass. A caller stepping and refining at once keeps the key frame
before alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import torch

from engine.motion import warp_back
from engine.refine_stage import CarriedProbs, PendingProbs

__all__ = ["Between", "InOrder"]


class Between:
    """The carried frame waiting for the next key frame. ``finish(coarse)`` turns (K + 1, gh, gw)
    grid probabilities into what the refiner takes (upsampled to the frame)."""

    def __init__(self, finish: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._finish = finish
        self._waiting: tuple[torch.Tensor, PendingProbs] | None = None

    def hold(self, before: torch.Tensor) -> PendingProbs:
        """A carried frame's grid probabilities moved from the key frame before -> its probabilities,
        made by :meth:`resolve` (a frame still waiting is resolved first, with the frame before alone)."""
        self.resolve()
        pending = PendingProbs()
        self._waiting = (before, pending)
        return pending

    def resolve(self, after: torch.Tensor | None = None, flow: torch.Tensor | None = None) -> None:
        """Make the waiting frame's probabilities: the mean of the key frame before and ``after``,
        the next key frame's grid probabilities moved back along ``flow`` (its backward flow into the
        carried frame, in cells: reversed by negation); without them (the last frame, a frame given a
        mask, a stop), the frame before alone."""
        if self._waiting is None:
            return
        (before, pending), self._waiting = self._waiting, None
        probs = before
        if after is not None and flow is not None and after.shape == before.shape:
            probs = 0.5 * (before + warp_back(after, -flow))
        pending.set(self._finish(probs))


class InOrder:
    """What a caller stepping with ``later=True`` hands on in frame order: ``add(entry, probs)``, then
    ``ready()`` yields the entries whose turn has come, each once its ``probs`` are made (a carried
    frame's: once the next key frame is stepped; None or anything else: at once); after the last
    frame ``finish()`` ends the session's waiting and yields the rest."""

    def __init__(self, session) -> None:
        self.session = session
        self._waiting: deque = deque()

    def add(self, entry, probs=None) -> None:
        self._waiting.append((entry, probs))

    def ready(self) -> Iterator:
        while self._waiting and (not isinstance(self._waiting[0][1], CarriedProbs) or self._waiting[0][1].ready):
            yield self._waiting.popleft()[0]

    def finish(self) -> Iterator:
        self.session.finish()
        yield from self.ready()
