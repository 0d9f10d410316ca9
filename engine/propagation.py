"""The propagate stage: labels move from the reference bank and the online memory to each new frame.

The only sequential state of a session lives here: the object registry, the reference bank, the
online memory, the previous frame's probabilities (the temporal prior) and the optical flow.
Frames arrive already embedded (engine.embedder); everything here works on the stride-8 grid.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import SessionConfig
from engine.errors import VosError
from engine.follow import ObjectCentres, object_centres
from engine.interior import QueryPlan, blocks_to_redo, plan_queries, settled_cells
from engine.memory import ObjectRegistry, OnlineMemory, PixelSet, ReferenceBank, memory_quotas
from engine.motion import GridFlow, warp_back
from engine.retrieval import knn_probabilities
from engine.window import Box, covers


class Propagator:
    """Grid probabilities, frame after frame: ``reference`` for an annotated frame, ``propagate``
    for a key frame (retrieval), ``carry`` for a frame between key frames (flow only)."""

    def __init__(self, config: SessionConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.registry = ObjectRegistry()
        self.bank = ReferenceBank()
        self.memory = OnlineMemory(config.memory_size if config.online else 0)
        self._generator = torch.Generator().manual_seed(0)
        self._previous: torch.Tensor | None = None  # (K + 1, gh, gw) grid probabilities of the last frame
        # Keys projected to ``project_dim`` (engine.config): the bank keeps the keys as the model
        # gives them, so the directions can be refitted when a frame introduces an object.
        self._gram: torch.Tensor | None = None  # (D, D) float64 sum of k k^T over the introducing frames
        self._gram_pixels = 0  # how many keys that sum holds
        self._projection: torch.Tensor | None = None  # (D, project_dim)
        self._projected: tuple[PixelSet, PixelSet] | None = None  # (the bank's pixels, projected)
        self._searched: tuple[PixelSet, PixelSet, PixelSet] | None = None  # (bank, memory, both)
        self._flow = GridFlow() if config.prior_flow and config.prior_floor < 1.0 else None
        self._centres = ObjectCentres() if config.follow_objects else None  # engine.follow

    def motion(self, small: np.ndarray, grid: tuple[int, int]) -> torch.Tensor | None:
        """Call once per frame, in order: (gh, gw, 2) backward flow in cells, None when not used."""
        return self._flow.step(small, grid) if self._flow is not None else None

    @property
    def pixel_flow(self) -> torch.Tensor | None:
        """The last :meth:`motion`'s flow at its own resolution, (h, w, 2) in its pixels; None without one."""
        return self._flow.pixels if self._flow is not None else None

    # ---- annotated frames ----------------------------------------------------------------------
    def reference(self, pixels: PixelSet, mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Add an annotated frame ((H, W) uint8 user ids) to the bank -> (K + 1, H, W) its one-hot mask.

        Ids not seen before become new objects (a slot each, from this frame on); the frame stays
        in the bank for good when it introduced one, else it is one of the bank's recent corrections.
        A mask after the first empties the online memory, which then refills from this frame on.
        """
        ids = [int(i) for i in np.unique(mask) if i != 0]
        if not ids:
            raise VosError("The mask has no object pixels: mark at least one object.")
        introduces = any(i not in self.registry.ids for i in ids)
        self.registry.register(ids)
        if self.config.online:
            self.memory.resize(self.config.memory_size * self._memory_scale())
        slots = torch.from_numpy(self.registry.to_slots(mask))
        given = F.one_hot(slots, self.registry.num_slots).permute(2, 0, 1).float()  # (K + 1, H, W)
        fractions = F.adaptive_avg_pool2d(given[None].to(self.device), grid)[0]
        labels = self._grid_labels(fractions)
        if introduces:
            self._fit_projection(pixels.keys)
        if self.started:
            # The memory's pixels were labelled before this mask was known: where the mask corrects
            # a drift, or names an object the memory took for background, they would outvote it.
            self.memory.clear()
        keep = self._bank_cells(labels, grid)
        origins = None
        if self._centres is not None:
            centres = object_centres(fractions)
            self._centres.annotated(centres)
            origins = centres[labels[keep]]
        self.bank.add(
            PixelSet(pixels.keys[keep], pixels.coords[keep], labels[keep]), permanent=introduces, origins=origins
        )
        self._previous = fractions
        return given

    def _grid_labels(self, fractions: torch.Tensor) -> torch.Tensor:
        """(K + 1, gh, gw) the share of each cell each slot fills -> (gh * gw,) the bank's labels.

        A cell is the slot's that fills most of it. A small object (fewer such cells than
        ``small_object_cells``) also takes every cell it fills at least ``small_object_fraction``
        of where no other object fills more: otherwise its few keys are outvoted in the next frame.
        An object thinner than a cell takes its best cell."""
        flat = fractions.reshape(len(fractions), -1)
        labels = flat.argmax(0)
        if self.config.small_object_cells > 0 and len(flat) > 1:
            top_object = flat[1:].argmax(0) + 1
            for slot in range(1, len(flat)):
                if 0 < int((labels == slot).sum()) < self.config.small_object_cells:
                    labels[(top_object == slot) & (flat[slot] >= self.config.small_object_fraction)] = slot
        for slot in range(1, len(flat)):
            if flat[slot].amax() > 0 and not (labels == slot).any():  # thinner than a cell: its best cell
                labels[flat[slot].argmax()] = slot
        return labels

    def _bank_cells(self, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(gh * gw,) grid labels -> the indices of the cells the bank keeps: every object cell and
        every cell within ``bank_band`` of one; of the background beyond, one cell in ``bank_stride``
        along each axis (neighbouring background cells are near copies of each other)."""
        stride, band = self.config.bank_stride, self.config.bank_band
        if stride <= 1:
            return torch.arange(len(labels), device=labels.device)
        objects = (labels > 0).float().reshape(1, 1, *grid)
        near = F.max_pool2d(objects, 2 * band + 1, stride=1, padding=band)[0, 0] > 0
        rows = torch.arange(grid[0], device=labels.device) % stride == 0
        cols = torch.arange(grid[1], device=labels.device) % stride == 0
        return torch.nonzero((near | (rows[:, None] & cols[None, :])).reshape(-1)).squeeze(1)

    @property
    def started(self) -> bool:
        """Whether a reference has been given (frames can be propagated)."""
        return len(self.bank) > 0

    # ---- key frames ----------------------------------------------------------------------------
    def propagate(
        self,
        pixels: PixelSet,
        grid: tuple[int, int],
        flow: torch.Tensor | None,
        *,
        remember: bool = True,
        box: Box | None = None,
    ) -> torch.Tensor | None:
        """A key frame's pixels -> (K + 1, gh, gw) probabilities from the bank, the memory and the prior.

        ``remember=False`` keeps this frame's pixels out of the online memory (a frame about to be
        given a mask: its prediction is what the mask corrects). ``box``: ``pixels`` hold keys only
        there (engine.window); None is returned, and nothing changes, where the gate would query a
        cell outside it."""
        moved = self._moved_previous(grid, flow)  # (K + 1, gh, gw) or None
        reach = self._reach(moved)  # (M, K) or None
        inside = self._inside(reach, grid)
        if not covers(box, inside):
            return None
        num_slots = self.registry.num_slots
        if self._following and moved is not None:
            self._centres.update(object_centres(moved), self._lost(moved))
        plan, label = self._plan(moved, inside, grid)
        if plan is None:
            probs = self._retrieve(pixels, num_slots)
        else:
            probs = self._retrieve_planned(pixels, plan, label, num_slots)
        probs = self._apply_prior(probs, reach)
        probs = self._apply_identity(probs, moved)
        if self.config.online and remember:
            self._remember(pixels, probs, None if plan is None else torch.cat([plan.query, plan.filled]))
        grid_probs = probs.T.reshape(num_slots, *grid).float()
        self._previous = grid_probs
        return grid_probs

    def _plan(
        self, moved: torch.Tensor | None, inside: torch.Tensor | None, grid: tuple[int, int]
    ) -> tuple[QueryPlan | None, torch.Tensor | None]:
        """Which cells retrieval labels (engine.interior), and the moved labels; (None, None): every cell.

        The gate (``prior_gate``) leaves out the cells no object can reach (plus ``gate_margin``);
        of the settled cells of the rest, one in ``interior_stride`` along each axis is retrieved.
        A lost object may come back anywhere, in what the previous frame took for settled
        background: where it takes a retrieved cell, the blocks around are retrieved after all
        (:func:`engine.interior.blocks_to_redo`). ``inside``: the gate's cells (:meth:`_inside`)."""
        if inside is None:
            inside = torch.ones(grid, dtype=torch.bool, device=self.device)
        stride = self.config.interior_stride
        if moved is not None and stride > 1:
            settled, label = settled_cells(moved, self.config.interior_level, self.config.interior_band)
        else:
            settled, label = torch.zeros_like(inside), None  # nothing settled: every inside cell is queried
        plan = plan_queries(inside, settled, stride)
        if len(plan.query) == inside.numel():
            return None, None
        return plan, label

    def _inside(self, reach: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor | None:
        """(gh, gw) bool: the cells the gate lets retrieval label; None: every cell (no gate)."""
        if reach is None or not self.config.prior_gate:
            return None
        reached = (reach > self.config.prior_floor).any(dim=1).float().reshape(1, 1, *grid)
        m = self.config.gate_margin
        if m > 0:  # a band beyond the prior's reach is still retrieved (and damped by the floor)
            reached = F.max_pool2d(reached, 2 * m + 1, stride=1, padding=m)
        return reached[0, 0] > 0

    @property
    def previous(self) -> torch.Tensor | None:
        """(K + 1, gh, gw) grid probabilities of the last frame; None before the first."""
        return self._previous

    def _retrieve(self, pixels: PixelSet, num_slots: int) -> torch.Tensor:
        """(M, K + 1) label probabilities of ``pixels`` (projected here) from the bank and the memory."""
        probs, _ = knn_probabilities(self._project(pixels), self._bank(), num_slots, self.config.retrieval)
        return probs

    def _retrieve_planned(
        self, pixels: PixelSet, plan: QueryPlan, label: torch.Tensor | None, num_slots: int
    ) -> torch.Tensor:
        """(M, K + 1): the planned cells retrieved, the filled ones copied from their anchors (or
        retrieved after all where an anchor changed), every other cell background."""
        probs = torch.zeros(len(pixels), num_slots, device=self.device)
        probs[:, 0] = 1.0
        if len(plan.query):
            probs[plan.query] = self._retrieve(pixels.subset(plan.query), num_slots)
        if len(plan.filled):
            probs[plan.filled] = probs[plan.anchor]
            redo = blocks_to_redo(plan, probs, label, self.config.interior_level, self.config.interior_stride)
            if len(redo):
                probs[redo] = self._retrieve(pixels.subset(redo), num_slots)
        return probs

    def carry(self, flow: torch.Tensor | None) -> torch.Tensor:
        """A frame between key frames -> (K + 1, gh, gw): the last probabilities moved along the flow."""
        if self._previous is None:
            raise VosError("The first frame needs a mask: the session has no reference yet.")
        if flow is not None:
            self._previous = warp_back(self._previous, flow)
        return self._previous

    # ---- parts -----------------------------------------------------------------------------------
    def _fit_projection(self, keys: torch.Tensor) -> None:
        """Refit the projection with the keys of a frame that introduced an object (N, D).

        The directions are the top eigenvectors of the summed k k^T of every such frame (their
        right singular vectors): dot products of projected unit vectors stay close to the cosines,
        which is all retrieval uses, for every object's own frame, not only the first one's. Only
        a frame that introduced an object refits, and each one empties the online memory (its
        keys were projected with the old directions), so the bank and the memory never mix two
        projections. With fewer pixels seen than ``project_dim`` the fit has too few directions:
        no projection.
        """
        dim = self.config.project_dim
        if not dim or dim >= keys.shape[1]:
            return
        # Each frame's product in float32, summed in float64; the eigenvectors in float32. On the
        # first frame of bear (4,992 x 600 keys, one core) 85 -> 46 ms, and a run's first output
        # waits for it; dot products of keys projected either way differ by at most 5e-6.
        k = keys.float()
        gram = (k.T @ k).double()
        self._gram = gram if self._gram is None else self._gram + gram
        self._gram_pixels += len(keys)
        if self._gram_pixels < dim:
            return
        _, vectors = torch.linalg.eigh(self._gram.float())  # ascending eigenvalues
        self._projection = vectors[:, -dim:].flip(1).to(keys.dtype).contiguous()
        self._projected = None

    def _project(self, pixels: PixelSet) -> PixelSet:
        if self._projection is None:
            return pixels
        return PixelSet(pixels.keys @ self._projection, pixels.coords, pixels.labels)

    def _bank(self) -> PixelSet:
        """The bank (projected, cached until the bank or the projection changes) and the memory
        (concatenated, cached until either changes); with several objects, the bank's object pixels
        where their objects are now (``follow_objects``, engine.follow)."""
        bank = self.bank.pixels()
        if bank is None:
            raise VosError("The first frame needs a mask: the session has no reference yet.")
        if self._projection is not None:
            if self._projected is None or self._projected[0] is not bank:
                self._projected = (bank, self._project(bank))
            bank = self._projected[1]
        searched = bank
        memory = self.memory.pixels()
        if memory is not None:
            # A frame with a redo retrieves twice from the same bank and memory: concatenated once.
            if self._searched is None or self._searched[0] is not bank or self._searched[1] is not memory:
                self._searched = (bank, memory, PixelSet.concat([bank, memory]))
            searched = self._searched[2]
        origins = self.bank.origins()
        if self._following and origins is not None:
            searched = self._centres.followed(searched, origins)
        return searched

    @property
    def _following(self) -> bool:
        """Whether the bank's object pixels follow their objects: with several objects only, and
        only where position enters the ranking (``spatial_weight``; with 0 there is nothing to move)."""
        return self._centres is not None and self.registry.num_slots > 2 and self.config.retrieval.spatial_weight > 0

    def _moved_previous(self, grid: tuple[int, int], flow: torch.Tensor | None) -> torch.Tensor | None:
        """(K + 1, gh, gw): the previous frame's probabilities moved along the flow; None when there
        is no prior (first frame, prior off). An object registered after the previous frame has no
        prior yet: its channel is zeros."""
        previous = self._previous
        if previous is None or self.config.prior_floor >= 1.0 or previous.shape[1:] != grid:
            return None
        missing = self.registry.num_slots - previous.shape[0]
        if missing > 0:
            previous = torch.cat([previous, previous.new_zeros(missing, *grid)])
        return warp_back(previous, flow) if flow is not None else previous

    def _lost(self, moved: torch.Tensor) -> torch.Tensor:
        """(K,) bool: the objects whose highest probability in ``moved`` is below ``prior_lost``."""
        return moved[1:].amax(dim=(1, 2)) < self.config.prior_lost

    def _reach(self, moved: torch.Tensor | None) -> torch.Tensor | None:
        """(gh * gw, K) in [0, 1]: how near each object was in the previous frame (``moved``),
        widened by ``prior_radius``; 1 everywhere for an object that was lost (a zero channel, an
        object new since the previous frame, reads as lost). None when there is no prior."""
        if moved is None:
            return None
        r = self.config.prior_radius
        near = F.max_pool2d(moved[None, 1:], 2 * r + 1, stride=1, padding=r)[0]  # (K, gh, gw)
        near[self._lost(moved)] = 1.0
        return near.reshape(len(near), -1).T

    def _apply_prior(self, probs: torch.Tensor, reach: torch.Tensor | None) -> torch.Tensor:
        """(M, K + 1) -> (M, K + 1): objects scaled by ``prior_floor`` where they cannot have got to."""
        if reach is None:
            return probs
        scale = torch.ones_like(probs)
        scale[:, 1:] = self.config.prior_floor + (1.0 - self.config.prior_floor) * reach
        probs = probs * scale
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def _apply_identity(self, probs: torch.Tensor, moved: torch.Tensor | None) -> torch.Tensor:
        """(M, K + 1) -> (M, K + 1): the objects' share of a cell redistributed by who held it.

        Retrieval tells an object from the background well but two objects of the same kind
        poorly: their pixels look alike. Where the previous frame (moved along the flow) gave a
        cell to one object, the others' probability there is scaled by their share of it, raised
        to ``identity_power``; the background's probability is left as retrieval gave it. A cell no
        object held is shared evenly, so with one object, or none nearby, nothing changes.
        """
        power = self.config.identity_power
        if moved is None or power <= 0 or self.registry.num_slots < 3:
            return probs
        held = moved[1:].reshape(len(moved) - 1, -1).T.clamp_min(0)  # (M, K)
        lost = self._lost(moved)
        delta = self.config.identity_floor
        share = (held + delta) / (held.sum(dim=1, keepdim=True) + delta * held.shape[1])
        share[:, lost] = share.amax(dim=1, keepdim=True).expand(-1, int(lost.sum()))  # a lost object may be anywhere
        objects = probs[:, 1:]
        weighted = objects * share.pow(power)
        mass = objects.sum(dim=1, keepdim=True)
        objects = weighted * (mass / weighted.sum(dim=1, keepdim=True).clamp_min(1e-12))
        return torch.cat([probs[:, :1], objects], dim=1)

    def _remember(self, pixels: PixelSet, probs: torch.Tensor, cells: torch.Tensor | None) -> None:
        """Confident labelled cells of this frame (``cells`` of ``pixels``, None: all; ``probs`` of
        every cell) join the online memory (at most ``memory_per_frame`` for each object, up to
        ``memory_objects`` objects), projected. Cells that copied a retrieved neighbour count as
        well: they are as sure as it, and without them the memory would draw more of its pixels
        from near the boundaries. With several objects each label gives its quota
        (``memory_object_power``, :func:`engine.memory.memory_quotas`)."""
        confidence, labels = (probs if cells is None else probs[cells]).max(dim=1)
        chosen = torch.nonzero(confidence >= self.config.memory_threshold).squeeze(1)
        quota = self.config.memory_per_frame * self._memory_scale()
        if len(chosen) > quota:
            if probs.shape[1] > 2 and self.config.memory_object_power != 1.0:
                chosen = self._by_quota(chosen, labels[chosen], quota)
            else:
                pick = torch.randperm(len(chosen), generator=self._generator)[:quota]
                chosen = chosen[pick.to(chosen.device)]
        joining = self._project(pixels.subset(chosen if cells is None else cells[chosen]))
        self.memory.add(PixelSet(joining.keys, joining.coords, labels[chosen]))

    def _memory_scale(self) -> int:
        """How many times its size for one object the memory is: the objects' count, at most
        ``memory_objects``."""
        return max(1, min(self.registry.num_slots - 1, self.config.memory_objects))

    def _by_quota(self, chosen: torch.Tensor, labels: torch.Tensor, quota: int) -> torch.Tensor:
        """``chosen`` cells (labelled ``labels``) -> each label's quota of them, drawn at random."""
        counts = torch.bincount(labels, minlength=self.registry.num_slots).tolist()
        picked = []
        for slot, n in enumerate(memory_quotas(counts, quota, self.config.memory_object_power)):
            if n:
                mine = torch.nonzero(labels == slot).squeeze(1)
                picked.append(mine[torch.randperm(len(mine), generator=self._generator)[:n].to(mine.device)])
        return chosen[torch.cat(picked)] if picked else chosen[:0]
