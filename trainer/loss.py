"""The paper's pixel-wise triplet loss against a pool of candidate neighbours.

For an anchor pixel ``a`` of the anchor frame and the pool (every labelled pixel of the sample's
other frames)::

    d+ = min over pool pixels p with label(p) == label(a) of d(a, p)
    d- = min over pool pixels n with label(n) != label(a) of d(a, n)
    loss(a) = max(0, d+ - d- + margin)

Only the nearest neighbour of each kind matters, because inference labels a pixel by its nearest
neighbours: an anchor is done once its closest same-label candidate beats every other-label one by
the margin, however far the rest of its own object's pixels are. Several objects work the same way
(each one's "other labels" include the other objects). Anchors whose label is absent from the pool,
or whose pool has no other label, have no triplet and are skipped.

Distance. ``d(a, p) = |e_a - e_p|^2 = 2 - 2 cos(e_a, e_p)``, the squared Euclidean distance
between unit embeddings, in [0, 4]. It is the distance the engine's k-NN retrieval ranks and
votes with (:mod:`engine.retrieval`), so the margin is measured in the units used at inference,
and unlike the plain Euclidean distance its gradient stays finite at 0. A margin of 0.7 asks, for
instance, for cos 0.9 to the nearest same-label pixel (d = 0.2) against at most cos 0.55 to the
nearest other-label one (d = 0.9).

Anchors: up to ``anchors_per_label`` pixels per label of the anchor frame, drawn uniformly, so that
a small object counts as much as the background.

The vote loss (``kind="vote"``) trains for the rule inference applies instead of its first
neighbour alone: the anchor's ``k`` nearest pool pixels, and its nearest same-label one when it is
not among them, are weighted by ``softmax(-d / temperature)`` as :mod:`engine.retrieval` weights its
k neighbours' votes, and the loss is ``-log`` of the weight its own label gets, its own label's
distances counted ``margin`` longer (so it must win by the margin, as in the triplet). It pulls the
nearest same-label pixel in and pushes every wrong one of the k away, in proportion to the vote it
would cast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.data import IGNORE

_FAR = 1e4  # stands in for "no such pool pixel" in the masked minima
LOSS_KINDS = ("triplet", "vote")


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    anchors: int  # anchors that had a triplet
    active: float  # fraction of those violating the margin (triplet) or outvoted (vote: own label under half)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) unit vectors -> (N, M) squared Euclidean distances ``2 - 2 a.b``."""
    return (2.0 - 2.0 * (a @ b.T)).clamp_min(0.0)


def anchor_losses(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    pool: torch.Tensor,
    pool_labels: torch.Tensor,
    *,
    margin: float,
    kind: str = "triplet",
    k: int = 5,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Per-anchor loss of the anchors that have a triplet (a same-label and an other-label pool pixel).

    anchors (N, D), anchor_labels (N,), pool (M, D), pool_labels (M,); embeddings unit length,
    labels integers (pool pixels labelled IGNORE are not candidates). Returns (N',), N' <= N.
    ``kind`` "triplet" (with ``margin``) or "vote" (with ``k`` and ``temperature``; module docstring).
    """
    keep = pool_labels != IGNORE
    pool, pool_labels = pool[keep], pool_labels[keep]
    d = squared_distances(anchors.float(), pool.float())
    same = anchor_labels[:, None] == pool_labels[None, :]
    has_triplet = same.any(dim=1) & (~same).any(dim=1)
    if not len(pool):
        return d.new_zeros(0)
    d_pos = d.masked_fill(~same, _FAR).min(dim=1).values
    if kind == "vote":
        return _vote_losses(d, same, d_pos, k=k, temperature=temperature, margin=margin)[has_triplet]
    d_neg = d.masked_fill(same, _FAR).min(dim=1).values
    return (d_pos - d_neg + margin).clamp_min(0.0)[has_triplet]


def _vote_losses(
    d: torch.Tensor, same: torch.Tensor, d_pos: torch.Tensor, *, k: int, temperature: float, margin: float
) -> torch.Tensor:
    """-log of the softmax vote an anchor's own label gets from its k nearest pool pixels and its
    nearest same-label one (counted once when it is among the k), the own label's distances counted
    ``margin`` longer. (N, M), (N, M), (N,) -> (N,)."""
    top_d, top_i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
    top_same = same.gather(1, top_i)
    # The nearest same-label pixel as one more candidate, dropped (-inf) where it is already among the k.
    pos_logit = (-(d_pos + margin) / temperature).masked_fill(top_same.any(dim=1), float("-inf"))
    logits = torch.cat([-(top_d + margin * top_same) / temperature, pos_logit[:, None]], dim=1)
    own = torch.cat([top_same, torch.ones_like(top_same[:, :1])], dim=1)
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~own, float("-inf")), dim=1)


def sample_anchors(labels: torch.Tensor, per_label: int, generator: torch.Generator) -> torch.Tensor:
    """(P,) labels -> indices of up to ``per_label`` pixels of each label (IGNORE excluded)."""
    chosen = []
    for label in torch.unique(labels):
        if int(label) == IGNORE:
            continue
        idx = torch.nonzero(labels == label).squeeze(1)
        if len(idx) > per_label:
            idx = idx[torch.randperm(len(idx), generator=generator)[:per_label]]
        chosen.append(idx)
    return torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)


def pixelwise_metric_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    anchors_per_label: int,
    margin: float,
    generator: torch.Generator,
    kind: str = "triplet",
    k: int = 5,
    temperature: float = 0.05,
) -> LossOutput:
    """Mean anchor loss over a batch, of ``kind`` "triplet" (the paper's) or "vote" (:func:`anchor_losses`).

    embeddings (B, F, D, h, w) unit vectors, labels (B, F, h, w) on the CPU; frame 0 of each
    sample gives the anchors, frames 1..F-1 the pool.
    """
    b, f, d = embeddings.shape[:3]
    losses = []
    for i in range(b):
        anchor_emb = embeddings[i, 0].flatten(1).T  # (h*w, D)
        pool_emb = embeddings[i, 1:].permute(0, 2, 3, 1).reshape(-1, d)  # ((F-1)*h*w, D)
        anchor_lab, pool_lab = labels[i, 0].flatten(), labels[i, 1:].flatten()
        idx = sample_anchors(anchor_lab, anchors_per_label, generator)
        device = embeddings.device
        losses.append(
            anchor_losses(
                anchor_emb[idx.to(device)],
                anchor_lab[idx].to(device),
                pool_emb,
                pool_lab.to(device),
                margin=margin,
                kind=kind,
                k=k,
                temperature=temperature,
            )
        )
    per_anchor = torch.cat(losses)
    if len(per_anchor) == 0:
        # Zero, but still through the graph, so every process reduces the same gradients.
        return LossOutput(embeddings.sum() * 0.0, 0, 0.0)
    active = float((per_anchor > (math.log(2.0) if kind == "vote" else 0.0)).float().mean())
    return LossOutput(per_anchor.mean(), len(per_anchor), active)
