"""Distractors pasted into cached feature maps: another sequence's object beside the host's.

DAVIS 2016 has one object a sequence, so a training sample never shows two objects that must be
told apart; on multi-object footage the embedding then matches a person to another person. With
cached backbone features (trainer.cache) the frames are gone, but the features are local enough to
paste: the cells of a donor object (from another sequence, at every level of the feature pyramid)
replace the host's cells at an offset near the host object, in front of it or behind it, with a
label of its own. The triplet loss then pushes the host's pixels away from the distractor's, and
the distractor's own pixels (anchored on frame 0) towards themselves.

The offset is whole cells of the coarsest level, so the levels stay aligned; the same offset holds
for every frame of the sample, and the donor moves as it did in its own video. The receptive
field of a pasted cell still holds some of the donor's own background: an approximation, like the
cache's flip.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.model import OUTPUT_STRIDE


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the last two dimensions by (dy, dx) cells, filling with zeros (no wrap-around)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def paste_distractor(
    features: list[torch.Tensor],
    labels: torch.Tensor,
    donor_features: list[torch.Tensor],
    donor_labels: torch.Tensor,
    strides: list[int],
    rng: np.random.Generator,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Paste the donor's objects into the host sample; returns new features and labels.

    features / donor_features: [(F, C_l, h_l, w_l)] per level of stride ``strides[l]``; labels /
    donor_labels (F, gh, gw) on the stride-8 grid (IGNORE, 0 background, 1.. objects). The donor's
    objects become one new label (the host's largest plus one). With probability 1/2 the donor is
    behind the host's objects (it shows only on the host's background), and its maps are mirrored
    with probability 1/2. A donor without object cells on its first frame leaves the sample as it was.
    """
    donor_mask = donor_labels > 0  # (F, gh, gw)
    if not bool(donor_mask[0].any()):
        return features, labels
    if rng.random() < 0.5:
        donor_features = [f.flip(-1) for f in donor_features]
        donor_mask = donor_mask.flip(-1)
    coarse = max(strides) // OUTPUT_STRIDE  # grid cells per coarsest cell
    gh, gw = labels.shape[-2:]
    host = labels[0] > 0
    ys, xs = torch.nonzero(donor_mask[0], as_tuple=True)
    dcy, dcx = float(ys.float().mean()), float(xs.float().mean())
    if bool(host.any()):  # beside the host object: a hard negative, not one across the frame
        hy, hx = torch.nonzero(host, as_tuple=True)
        span_y, span_x = float(hy.max() - hy.min() + 1), float(hx.max() - hx.min() + 1)
        ty = float(hy.float().mean()) + rng.uniform(-0.75, 0.75) * span_y
        tx = float(hx.float().mean()) + rng.uniform(-1.0, 1.0) * span_x
    else:
        ty, tx = rng.uniform(0, gh), rng.uniform(0, gw)
    dy = int(round((ty - dcy) / coarse)) * coarse
    dx = int(round((tx - dcx) / coarse)) * coarse
    dy = int(np.clip(dy, -(gh - coarse), gh - coarse))
    dx = int(np.clip(dx, -(gw - coarse), gw - coarse))
    mask = _shift(donor_mask, dy, dx)  # (F, gh, gw) bool
    if rng.random() < 0.5:  # behind the host: only where the host shows background
        mask &= labels == 0
    new_label = int(labels.max()) + 1
    out_labels = labels.clone()
    out_labels[mask] = new_label
    out_features = []
    for f, donor, stride in zip(features, donor_features, strides, strict=True):
        r = stride // OUTPUT_STRIDE  # grid cells per cell of this level (strides are 8 and coarser)
        level_mask = F.avg_pool2d(mask[:, None].float(), r)[:, 0] > 0.5  # most of its grid cells
        out_features.append(torch.where(level_mask[:, None], _shift(donor, dy // r, dx // r), f))
    return out_features, out_labels
