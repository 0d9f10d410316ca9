"""The vote loss (trainer.loss, ``kind="vote"``) against a brute-force reading of its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.data import IGNORE
from trainer.loss import anchor_losses


def brute_force_vote(anchors, anchor_labels, pool, pool_labels, k, temperature, margin):
    """-log of the softmax share of the anchor's own label among its k nearest candidates, the
    nearest same-label candidate added when it is not among them."""
    losses = []
    for a, la in zip(anchors, anchor_labels, strict=True):
        cands = [(float(2 - 2 * a @ p), int(lp)) for p, lp in zip(pool, pool_labels, strict=True) if lp != IGNORE]
        if not any(lp == la for _, lp in cands) or all(lp == la for _, lp in cands):
            continue
        cands.sort(key=lambda c: c[0])
        chosen = cands[:k]
        if not any(lp == la for _, lp in chosen):
            chosen.append(min((c for c in cands if c[1] == la), key=lambda c: c[0]))
        w = np.exp([-(d + margin * (lp == la)) / temperature for d, lp in chosen])
        losses.append(-math.log(sum(wi for wi, (_, lp) in zip(w, chosen, strict=True) if lp == la) / w.sum()))
    return losses


def test_vote_loss_equals_brute_force_on_hand_built_embeddings():
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(9, 4), dim=1)
    pool = F.normalize(torch.randn(12, 4), dim=1)
    anchor_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1])
    pool_labels = torch.tensor([0, 1, 2, 0, 1, 2, IGNORE, 0, 1, 2, IGNORE, 0])
    got = anchor_losses(anchors, anchor_labels, pool, pool_labels, margin=0.3, kind="vote", k=3, temperature=0.2)
    want = brute_force_vote(anchors, anchor_labels, pool, pool_labels, 3, 0.2, 0.3)
    assert len(want) == 8
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    # Some anchors' own label is among their 3 nearest, some only through the added candidate.
    d = 2 - 2 * anchors @ pool[pool_labels != IGNORE].T
    near = pool_labels[pool_labels != IGNORE][d.topk(3, largest=False).indices]
    has_own = (near == anchor_labels[:, None]).any(1)[:8]
    assert has_own.any() and not has_own.all()


def test_vote_loss_pulls_the_own_label_in_and_pushes_the_others_out():
    anchors = torch.tensor([[1.0, 0.0]])
    angles = torch.tensor([0.3, 0.1, 0.2])  # the own-label pixel is the farthest
    pool = torch.stack([angles.cos(), angles.sin()], 1).requires_grad_()
    loss = anchor_losses(anchors, torch.tensor([0]), pool, torch.tensor([0, 1, 1]), margin=0.0, kind="vote", k=2)
    assert float(loss.detach()) > math.log(2)  # outvoted
    loss.sum().backward()
    toward_anchor = -(pool.grad * (anchors - pool.detach())).sum(1)  # > 0: a step moves it closer
    assert toward_anchor[0] > 0 and (toward_anchor[1:] < 0).all()
