"""Which grid cells retrieval labels itself, and which copy a neighbour: sparse queries in settled regions.

Retrieval's cost is linear in the number of query cells. Most of a frame's cells lie deep inside an
object or deep in the background, where the previous frame (moved along the optical flow) was sure
of the label and so were all its neighbours: there the label changes only when something enters,
and an entering object is larger than a cell. Such *settled* cells are queried one in
``stride x stride`` (the block's top-left cell, its anchor); the other cells of the block copy their
anchor's probabilities. An anchor whose retrieved label is no longer what the previous frame gave
it, or no longer sure, has its block and the blocks around it retrieved after all
(:func:`blocks_to_redo`), so a change inside a settled region costs one more, small, retrieval
instead of being smeared over the block.

Cells near a boundary, unsure cells, and cells whose anchor is not retrieved are always queried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class QueryPlan:
    """Flat cell indices of the grid: ``query`` are retrieved; each ``filled[i]`` copies ``anchor[i]``."""

    query: torch.Tensor  # (Q,)
    filled: torch.Tensor  # (P,)
    anchor: torch.Tensor  # (P,), every one of them in ``query``


def settled_cells(moved: torch.Tensor, level: float, band: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(K + 1, gh, gw) moved probabilities -> (settled (gh, gw) bool, label (gh, gw)): cells whose
    neighbours within ``band`` cells all have one label, each with probability at least ``level``."""
    confidence, label = moved.max(dim=0)
    size = 2 * band + 1
    sure = (confidence >= level).float()[None, None]
    all_sure = -F.max_pool2d(-sure, size, stride=1, padding=band)[0, 0] > 0
    lab = label.float()[None, None]
    # Padding counts as agreement: the frame's edge is not a boundary between labels.
    highest = F.max_pool2d(lab, size, stride=1, padding=band)[0, 0]
    lowest = -F.max_pool2d(-lab, size, stride=1, padding=band)[0, 0]
    return all_sure & (highest == lowest), label


def plan_queries(inside: torch.Tensor, settled: torch.Tensor, stride: int) -> QueryPlan:
    """inside (gh, gw) bool: the cells to label; settled (gh, gw) bool -> a :class:`QueryPlan`."""
    gh, gw = inside.shape
    device = inside.device
    ys = torch.arange(gh, device=device)
    xs = torch.arange(gw, device=device)
    anchor = ((ys - ys % stride)[:, None] * gw + (xs - xs % stride)[None, :]).reshape(-1)
    index = torch.arange(gh * gw, device=device)
    flat_inside, flat_settled = inside.reshape(-1), settled.reshape(-1)
    # A settled cell copies its anchor when the anchor is itself a settled cell to label (so it is
    # queried, and its label stands for a block that agreed on one label).
    copies = flat_inside & flat_settled & (anchor != index) & flat_inside[anchor] & flat_settled[anchor]
    return QueryPlan(
        query=torch.nonzero(flat_inside & ~copies).squeeze(1),
        filled=torch.nonzero(copies).squeeze(1),
        anchor=anchor[copies],
    )


def blocks_to_redo(
    plan: QueryPlan, probs: torch.Tensor, label: torch.Tensor, level: float, stride: int
) -> torch.Tensor:
    """The filled cells to retrieve after all: ``probs`` (gh * gw, K + 1) with the anchors retrieved,
    ``label`` (gh, gw) the moved labels -> flat cell indices.

    An anchor changed when its retrieved label differs from its moved one or is below ``level``.
    Its block and the blocks around it are redone: something entering a settled region is caught
    by at least one anchor, but may cover the neighbouring blocks too."""
    confidence, now = probs[plan.anchor].max(dim=1)
    changed = (now != label.reshape(-1)[plan.anchor]) | (confidence < level)
    if not changed.any():
        return plan.filled[:0]
    hit = torch.zeros(label.numel(), device=label.device)
    hit[plan.filled[changed]] = 1.0
    near = F.max_pool2d(hit.reshape(1, 1, *label.shape), 2 * stride + 1, stride=1, padding=stride)
    return plan.filled[near.reshape(-1)[plan.filled] > 0]
