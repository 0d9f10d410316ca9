"""Nearest-neighbour label transfer: each query pixel takes the labels of its k nearest bank pixels.

Exact search: a matrix product and ``topk``, over chunks of queries so memory stays bounded by
``chunk x bank`` scores whatever the frame size.

Distance. Embeddings are unit vectors, so the squared Euclidean distance is ``2 - 2 cos``. The
paper's spatio-temporal coordinates can enter the distance with weight ``spatial_weight``:
``d^2 = |e_q - e_b|^2 + w^2 |xy_q - xy_b|^2``, which prefers neighbours near the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import VosError
from engine.memory import PixelSet

VOTES = ("uniform", "softmax", "inverse")


@dataclass(frozen=True)
class RetrievalConfig:
    k: int = 5
    vote: str = "softmax"  # how the k neighbours' labels are weighted
    temperature: float = 0.05  # softmax temperature on the squared distance
    spatial_weight: float = 0.0  # w above; 0 ignores position
    chunk: int = 4096  # query pixels per chunk

    def __post_init__(self) -> None:
        if self.k < 1:
            raise VosError("k must be at least 1.")
        if self.vote not in VOTES:
            raise VosError(f"Unknown vote '{self.vote}'; choose one of: {', '.join(VOTES)}.")
        if self.temperature <= 0:
            raise VosError("The vote temperature must be positive.")


def _squared_distances(q_keys, q_xy, keys, xy, w: float) -> torch.Tensor:
    """(M, D), (M, 2), (N, D), (N, 2) -> (M, N) squared distances."""
    d2 = 2.0 - 2.0 * (q_keys @ keys.T)
    if w > 0:
        d2 = d2 + (w * w) * torch.cdist(q_xy, xy).square()
    return d2


def knn_probabilities(
    query: PixelSet, bank: PixelSet, num_labels: int, config: RetrievalConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label probabilities of each query pixel from its k nearest bank pixels.

    query: M pixels (labels ignored); bank: N labelled pixels with labels in [0, num_labels).
    Returns ``probs`` (M, num_labels) summing to 1 per row, and ``nearest`` (M,) the squared
    distance to the closest neighbour (a confidence signal: far means unsure).
    """
    if len(bank) == 0:
        raise VosError("The reference bank is empty: give a mask on the first frame.")
    k = min(config.k, len(bank))
    keys = bank.keys.to(query.keys.dtype)
    xy = bank.coords[:, :2].float()
    probs, nearest = [], []
    for start in range(0, len(query), config.chunk):
        q_keys = query.keys[start : start + config.chunk]
        q_xy = query.coords[start : start + config.chunk, :2].float()
        if config.spatial_weight > 0:
            d2 = _squared_distances(q_keys, q_xy, keys, xy, config.spatial_weight).float()
            top_d2, top_i = torch.topk(d2, k, dim=1, largest=False)
        else:  # rank by similarity and convert only the k winners: two passes fewer over the scores
            top_sim, top_i = torch.topk(q_keys @ keys.T, k, dim=1)
            top_d2 = (2.0 - 2.0 * top_sim.float()).clamp_min(0.0)
        if config.vote == "uniform":
            weights = torch.ones_like(top_d2)
        elif config.vote == "softmax":
            weights = torch.softmax(-top_d2 / config.temperature, dim=1)
        else:
            weights = 1.0 / (top_d2.clamp_min(0) + 1e-4)
        votes = torch.zeros(len(q_keys), num_labels, device=top_d2.device)
        votes.scatter_add_(1, bank.labels[top_i], weights)
        probs.append(votes / votes.sum(dim=1, keepdim=True))
        nearest.append(top_d2[:, 0])
    return torch.cat(probs), torch.cat(nearest)
