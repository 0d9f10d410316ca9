"""Which part of a frame the network must see: the box around where the objects can be.

Retrieval labels only the cells the temporal prior's gate lets an object reach (engine.propagation);
every other cell is background without a query. So the network need not embed them either: it runs
on the box around the gate's cells, widened by ``embed_context`` cells so that the keys inside match the
whole frame's (an EfficientNet's feature at a cell depends on the image around it), and the
network's cost falls with the box's area.

The box of frame ``t`` is decided when frame ``t - 2`` is done (:func:`next_box`), so that the
network, which embeds a frame ahead of retrieval on a thread of its own (vosctl.pipeline), can use
it, and a session run frame by frame (``vosctl eval``) decides exactly the same boxes: the objects
of frame ``t - 2``, widened by two frames of the prior's reach (``2 * prior_radius``) and the gate's
margin, plus the context. Before retrieving frame ``t``, propagation checks that the gate's cells
(moved along the flow) lie inside it (:func:`covers`); where they do not (an object that moved more
than the reach in two frames, an object lost), the session embeds the whole frame again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from engine.config import ALIGN, SessionConfig
from engine.model import OUTPUT_STRIDE

CELLS = ALIGN // OUTPUT_STRIDE  # a box's sides are multiples of this many cells (the network's input of 32 px)
MAX_AREA = 0.85  # a box of more of the grid than this: the whole frame (a new input size costs a little)
WAIT = 60.0  # seconds at most a thread embedding ahead waits for its frame's box (BoxSchedule.box_for)


@dataclass(frozen=True)
class Box:
    """Rows ``y0:y1`` and columns ``x0:x1`` of the stride-8 grid, multiples of :data:`CELLS`."""

    y0: int
    y1: int
    x0: int
    x1: int

    def pixels(self) -> tuple[slice, slice]:
        """The rows and columns of the network's input image (multiples of 32)."""
        return (
            slice(self.y0 * OUTPUT_STRIDE, self.y1 * OUTPUT_STRIDE),
            slice(self.x0 * OUTPUT_STRIDE, self.x1 * OUTPUT_STRIDE),
        )


def next_box(probs: torch.Tensor, config: SessionConfig) -> Box | None:
    """The box of the frame two after the one whose (K + 1, gh, gw) grid probabilities are
    ``probs``; None: the whole frame (the box is off, an object is lost, or the box would cover
    most of the grid)."""
    if not config.embed_context or not config.prior_gate or config.prior_floor >= 1.0:
        return None
    objects = probs[1:]
    if len(objects) == 0 or bool((objects.amax(dim=(1, 2)) < config.prior_lost).any()):
        return None
    ys, xs = torch.nonzero((objects > config.prior_floor).any(dim=0), as_tuple=True)
    if len(ys) == 0:
        return None
    grow = 2 * config.prior_radius + config.gate_margin + config.embed_context
    gh, gw = probs.shape[1:]
    y0, x0 = max(0, int(ys.min()) - grow) // CELLS * CELLS, max(0, int(xs.min()) - grow) // CELLS * CELLS
    y1 = min(gh, -(-(int(ys.max()) + 1 + grow) // CELLS) * CELLS)
    x1 = min(gw, -(-(int(xs.max()) + 1 + grow) // CELLS) * CELLS)
    if (y1 - y0) * (x1 - x0) > MAX_AREA * gh * gw:
        return None
    return Box(y0, y1, x0, x1)


def covers(box: Box | None, region: torch.Tensor | None) -> bool:
    """Whether the (gh, gw) bool ``region`` (None: every cell) lies inside ``box`` (None: the whole frame)."""
    if box is None:
        return True
    if region is None:
        return False
    outside = region.clone()
    outside[box.y0 : box.y1, box.x0 : box.x1] = False
    return not bool(outside.any())


class BoxSchedule:
    """The box of each coming frame, decided when the frame two before it is done
    (:meth:`frame_done`); another thread may wait for one (:meth:`box_for`)."""

    def __init__(self, config: SessionConfig, *, enabled: bool = True) -> None:
        self.config = config
        self.enabled = enabled and bool(config.embed_context)
        self._boxes: dict[int, Box | None] = {}
        self._frames_done = 0
        self._waiting = True  # False after stop_waiting
        self._done = threading.Condition()
        # The thread that steps the session (the one that made it, until a frame is done): it never
        # waits for a box, which only it could decide.
        self._stepper = threading.get_ident()

    def frame_done(self, position: int, probs: torch.Tensor | None) -> None:
        """Frame ``position`` is done, with (K + 1, gh, gw) grid probabilities ``probs``."""
        with self._done:
            if self.enabled and probs is not None:
                self._boxes[position + 2] = next_box(probs, self.config)
            self._boxes.pop(position, None)
            self._frames_done = position + 1
            self._stepper = threading.get_ident()
            self._done.notify_all()

    def box_for(self, position: int, *, wait: bool = False) -> Box | None:
        """Frame ``position``'s box (None: the whole frame). ``wait``: on another thread, until frame
        ``position - 2`` is done, so that the boxes are those of a session run frame by frame; after
        :meth:`stop_waiting`, or ``WAIT`` seconds, the whole frame. The stepping thread itself does not
        wait: a box not yet decided is the whole frame."""
        if not self.enabled or position < 2:
            return None
        with self._done:
            if wait and threading.get_ident() != self._stepper:
                self._done.wait_for(lambda: self._frames_done >= position - 1 or not self._waiting, timeout=WAIT)
            return self._boxes.get(position)

    def stop_waiting(self) -> None:
        """No more waiting in :meth:`box_for` (the thread that steps the session has stopped)."""
        with self._done:
            self._waiting = False
            self._done.notify_all()
