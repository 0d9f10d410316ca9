"""The embedding model as training sees it: one differentiable forward, which weights train, which
layers stay frozen, and a fingerprint of the trained weights (to check that ranks stay in sync)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from engine.backbones import FeatureLevel
from engine.errors import VosError
from engine.model import OUTPUT_STRIDE, EmbeddingModel, coordinate_grid, trained_backbone_state


class TrainingNet(nn.Module):
    """The embedding model as one differentiable forward, for DDP; a frozen backbone runs without grad."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor | None, t: torch.Tensor, features: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """images (N, 3, H, W) RGB in [0, 255] (or cached backbone ``features`` [(N, C_l, h_l, w_l)]),
        t (N,) -> (N, D, H/8, W/8) unit embeddings."""
        if features is None:
            backbone = self.model.backbone
            with torch.set_grad_enabled(self.model.config.train_backbone and torch.is_grad_enabled()):
                features = backbone(backbone.normalisation.apply(images))
            gh, gw = images.shape[-2] // OUTPUT_STRIDE, images.shape[-1] // OUTPUT_STRIDE
        else:
            stride = self.model.backbone.levels[0].stride
            gh, gw = (n * stride // OUTPUT_STRIDE for n in features[0].shape[-2:])
            if self.model.config.train_backbone:  # the coarse levels again, from the cache's finer one
                level = stored_level(self.model.backbone.levels, self.model.config.train_backbone_from)
                features = self.model.backbone.forward_from([f.float() for f in features[: level + 1]], level)
        coords = coordinate_grid(gh, gw, 0.0, device=t.device).expand(len(t), -1, -1, -1).clone()
        coords[:, 2] = t.to(coords.dtype)[:, None, None]
        return self.model.head(features, coords)


def stored_level(levels: tuple[FeatureLevel, ...], train_from: int) -> int:
    """With cached features and a partly trained backbone (``levels``; layers at stride
    ``train_from`` and coarser trained): the last level the frozen layers give (the cache holds it).
    The trained layers come after it in every backbone with ``forward_from`` and compute the coarser
    levels from it. Raises when no level is frozen or none is trained."""
    frozen = [i for i, level in enumerate(levels) if level.stride < train_from]
    if not frozen or len(frozen) == len(levels):
        strides = ", ".join(str(level.stride) for level in levels[1:])
        raise VosError(
            f"Cached features need the fine layers frozen: --train-backbone-from must be one of the "
            f"coarser levels' strides ({strides})."
        )
    return frozen[-1]


def set_train_mode(model: EmbeddingModel) -> None:
    """Head in training mode; the backbone stays in eval mode (frozen BatchNorm), even when fine-tuned,
    because the batches here are far too small for BatchNorm statistics."""
    model.train()
    model.backbone.eval()


def set_trainable_backbone(model: EmbeddingModel) -> None:
    """Gradients for exactly the backbone weights training changes (all, some or none): those
    :func:`engine.model.trained_backbone_state` names, which are also the ones saved."""
    trained = trained_backbone_state(model) or {}
    for name, parameter in model.backbone.named_parameters():
        parameter.requires_grad_(name in trained)


def parameter_hash(model: EmbeddingModel) -> str:
    """SHA-256 of the trained weights (the head, and the backbone when it is trained)."""
    digest = hashlib.sha256()
    modules = [model.head] + ([model.backbone] if model.config.train_backbone else [])
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
