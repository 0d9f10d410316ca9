"""What the network must see of each frame: whether it sees the frame at all, and the box around
where the objects can be.

Retrieval labels only the cells the temporal prior's gate lets an object reach (engine.propagation);
every other cell is background without a query. So the network need not embed them either: it runs
on the box around the gate's cells, widened by ``embed_context`` cells so that the keys inside match the
whole frame's (an EfficientNet's feature at a cell depends on the image around it), and the
network's cost falls with the box's area.

With ``carry_motion`` (and a ``keyframe_interval`` above 1) a frame is carried, not seen: its
probabilities are the last frame's moved along the optical flow. That is the key-frame interval's
carrying, but only where the objects moved little: a frame is carried when the objects moved at most
``carry_motion`` grid cells two frames before (:func:`motion`), and at most ``keyframe_interval - 1``
frames in a row.

The plan of frame ``t`` is decided when frame ``t - 2`` is done (:class:`FrameSchedule`), so that
the network, which embeds a frame ahead of retrieval on a thread of its own (vosctl.pipeline), can use
it, and a session run frame by frame (``vosctl eval``) decides exactly the same plans. The box is the
objects of frame ``t - 2`` (:func:`next_box`), widened by two frames of the prior's reach
(``2 * prior_radius``) and the gate's margin, plus the context. Before retrieving frame ``t``,
propagation checks that the gate's cells (moved along the flow) lie inside it (:func:`covers`); where
they do not (an object that moved more than the reach in two frames, an object lost), the session
embeds the whole frame again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.config import ALIGN, SessionConfig
from engine.model import OUTPUT_STRIDE

CELLS = ALIGN // OUTPUT_STRIDE  # a box's sides are multiples of this many cells (the network's input of 32 px)
MAX_AREA = 0.85  # a box of more of the grid than this: the whole frame (a new input size costs a little)
WAIT = 60.0  # seconds at most a thread embedding ahead waits for its frame's box (FrameSchedule.plan_for)


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


def motion(flow: torch.Tensor | None, probs: torch.Tensor) -> float | None:
    """How far the objects moved into a frame: the 90th percentile of the length of its (gh, gw, 2)
    backward ``flow`` (grid cells) over the cells the frame's (K + 1, gh, gw) ``probs`` give to an
    object; None without a flow (the first frame) or without an object cell."""
    if flow is None:
        return None
    objects = probs.argmax(dim=0) > 0
    if not bool(objects.any()):
        return None
    return float(torch.quantile(flow[objects].norm(dim=1), 0.9))


@dataclass(frozen=True)
class FramePlan:
    """What the network does with a frame: sees it (``key``) in ``box`` (None: the whole frame), or
    not at all (the frame is carried along the flow)."""

    key: bool = True
    box: Box | None = None


class FrameSchedule:
    """The plan of each coming frame, decided when the frame two before it is done
    (:meth:`frame_done`); another thread may wait for one (:meth:`plan_for`). ``enabled=False`` (a
    GPU): every frame is seen whole."""

    def __init__(self, config: SessionConfig, *, enabled: bool = True) -> None:
        self.config = config
        self.boxed = enabled and bool(config.embed_context)  # the network sees a box of the frame
        self.carrying = enabled and config.carries_by_motion
        self.enabled = self.boxed or self.carrying
        self._plans: dict[int, FramePlan] = {}
        self._since_key: int | None = None  # the fixed interval's frames since the last key frame
        self._frames_done = 0
        self._waiting = True  # False after stop_waiting
        self._done = threading.Condition()
        # The thread that steps the session (the one that made it, until a frame is done): it never
        # waits for a plan, which only it could decide. The thread itself, not its ident: the CLI
        # makes the session on a thread that then ends, and the network's thread, started next,
        # was usually given the same ident, so it did not wait for frame 2's plan and embedded the
        # whole frame where the plan had a box (masks differed from run to run from frame 2 on).
        self._stepper = threading.current_thread()

    def batch_keys(self, annotated: Sequence[bool]) -> list[int]:
        """Offsets in the next batch of frames (``annotated``: whether each has a mask) of those the
        network sees, as far as is known now: annotated frames, and every ``keyframe_interval``-th frame after the
        last key frame (annotated or not). Unless the interval is fixed (``fixed_interval``), every
        frame: where frames are carried by motion, :meth:`sees` decides each from its plan; elsewhere
        (every frame a key frame, or a GPU) every frame is seen."""
        if not self.config.fixed_interval:
            return list(range(len(annotated)))
        keys = []
        for i, given in enumerate(annotated):
            if given or self._since_key is None or self._since_key + 1 >= self.config.keyframe_interval:
                keys.append(i)
                self._since_key = 0
            else:
                self._since_key += 1
        return keys

    def sees(self, position: int, annotated: bool, listed: bool) -> bool:
        """Whether the network sees frame ``position``, now stepped: where frames are carried by
        motion, its plan (decided when the frame two before was done, so known for every frame of a
        batch by now) unless annotated; else whether :meth:`batch_keys` ``listed`` it."""
        if self.carrying:
            return annotated or self.plan_for(position).key
        return listed

    def frame_done(self, position: int, probs: torch.Tensor | None, flow: torch.Tensor | None = None) -> None:
        """Frame ``position`` is done, with (K + 1, gh, gw) grid probabilities ``probs`` and the
        (gh, gw, 2) backward ``flow`` into it (None: none)."""
        with self._done:
            if self.enabled and probs is not None:
                key = self._key(position + 2, probs, flow)
                box = next_box(probs, self.config) if self.boxed and key else None
                self._plans[position + 2] = FramePlan(key, box)
            # The plans of the frames just before the next to decide tell how many in a row were carried.
            self._plans.pop(position + 2 - max(2, self.config.keyframe_interval), None)
            self._frames_done = position + 1
            self._stepper = threading.current_thread()
            self._done.notify_all()

    def _key(self, position: int, probs: torch.Tensor, flow: torch.Tensor | None) -> bool:
        """Whether the network sees frame ``position``, two after the one done (``probs``, ``flow``)."""
        if not self.carrying:
            return True
        carried = 0  # frames carried in a row just before this one
        while carried < position and not self._plans.get(position - 1 - carried, FramePlan()).key:
            carried += 1
        if carried + 1 >= self.config.keyframe_interval:
            return True
        moved = motion(flow, probs)
        return moved is None or moved > self.config.carry_motion

    def plan_for(self, position: int, *, wait: bool = False) -> FramePlan:
        """Frame ``position``'s plan. ``wait``: on another thread, until frame ``position - 2`` is
        done, so that the plans are those of a session run frame by frame; after :meth:`stop_waiting`,
        or ``WAIT`` seconds, the whole frame. The stepping thread itself does not wait: a plan not yet
        decided is the whole frame."""
        if not self.enabled or position < 2:
            return FramePlan()
        with self._done:
            if wait and threading.current_thread() is not self._stepper:
                self._done.wait_for(lambda: self._frames_done >= position - 1 or not self._waiting, timeout=WAIT)
            return self._plans.get(position, FramePlan())

    def stop_waiting(self) -> None:
        """No more waiting in :meth:`plan_for` (the thread that steps the session has stopped)."""
        with self._done:
            self._waiting = False
            self._done.notify_all()
