"""The embedding network: a backbone and a head that maps every pixel (at stride 8) to a vector.

Phase methods, not one ``forward``: :meth:`EmbeddingModel.embed` turns an image into per-pixel
embeddings; retrieval lives in :mod:`engine.retrieval`; training logic lives in ``trainer/``.

Two heads share one interface, so the engine takes a trained head without changing:

- :class:`FeatureHead` has no parameters: the backbone's own multi-scale features, each level
  L2-normalised, upsampled to stride 8 and concatenated (the untrained baseline).
- :class:`EmbeddingHead` is the paper's head: backbone features plus the normalised (x, y, t)
  coordinates, a few convolutions, a ``dim``-d embedding per pixel (trained by ``vosctl train``).
  With ``skip > 0`` the untrained features ride along beside the learned ones (concatenated, the
  untrained part scaled by ``skip``), so the head learns what they lack instead of replacing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import Backbone, FeatureLevel, create_backbone
from engine.errors import VosError

OUTPUT_STRIDE = 8
# Frames are numbered from the annotated one; t = index / TIME_HORIZON. A stream's length is not
# known in advance, so time is scaled by a fixed horizon (about a DAVIS clip) instead of the length.
TIME_HORIZON = 100.0


def coordinate_grid(height: int, width: int, t: float, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised (x, y, t) of each cell of a stride-8 grid -> (3, height, width).

    x and y run over [0, 1] across the processed image, whatever its aspect ratio, as in the paper.
    """
    ys = torch.linspace(0.0, 1.0, height, device=device) if height > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(0.0, 1.0, width, device=device) if width > 1 else torch.zeros(1, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y, torch.full_like(grid_x, float(t))])


def unit_channels(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` written as a broadcast division: exported, F.normalize becomes an
    explicit Expand that OpenVINO runs with a reference kernel in the planar layout, between two
    layout conversions."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(eps)


def fuse_levels(features: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Bring each (B, C_l, h_l, w_l) to ``size`` (the stride-8 grid) by bilinear upsampling."""
    return [
        f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        for f in features
    ]


class FeatureHead(nn.Module):
    """Untrained embedding: per-level L2-normalised backbone features, concatenated, normalised."""

    def __init__(self, levels: tuple[FeatureLevel, ...], *, level_weights: tuple[float, ...] | None = None):
        super().__init__()
        weights = level_weights or tuple(1.0 for _ in levels)
        if len(weights) != len(levels):
            raise VosError("The feature head needs one weight per backbone level.")
        # Constants of the function, kept as Python numbers: a tensor here would be read back from
        # the device on every forward pass (a synchronisation on a GPU).
        self.level_weights = tuple(float(w) for w in weights)
        self._norm = sum(w * w for w in self.level_weights) ** 0.5
        self.dim = sum(level.channels for level in levels)

    def forward(self, features: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """features [(B, C_l, h_l, w_l)], coords (B, 3, h, w) -> (B, D, h, w), unit length."""
        return self.combine(fuse_levels(features, tuple(coords.shape[-2:])))

    def combine(self, fused: list[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
        """Levels already on the stride-8 grid (:func:`fuse_levels`) -> (B, D, h, w), of length
        ``scale``.

        Each level is normalised and weighted, so the concatenation's length is known in advance,
        sqrt(sum w^2): one multiplication per level instead of another pass that measures and
        divides (on a cell where a whole level is zero it is shorter; the backbone's levels end in
        a linear projection, so that does not happen)."""
        parts = [unit_channels(f) * (w * scale / self._norm) for f, w in zip(fused, self.level_weights, strict=True)]
        return torch.cat(parts, dim=1)


class EmbeddingHead(nn.Module):
    """The paper's embedding head: [features, x, y, t] -> conv layers -> ``dim``-d unit vectors."""

    def __init__(
        self,
        levels: tuple[FeatureLevel, ...],
        *,
        dim: int = 128,
        hidden: int = 128,
        depth: int = 3,
        use_coords: bool = True,
        skip: float = 0.0,
    ) -> None:
        super().__init__()
        self.use_coords = use_coords
        self.skip = FeatureHead(levels) if skip > 0 else None
        self.skip_weight = skip
        self.dim = dim + (self.skip.dim if self.skip is not None else 0)
        # One 1x1 projection per level keeps the wide deep levels from dominating the sum.
        self.lateral = nn.ModuleList(nn.Conv2d(level.channels, hidden, 1) for level in levels)
        layers: list[nn.Module] = []
        cin = hidden + (3 if use_coords else 0)
        for _ in range(depth - 1):
            layers += [nn.Conv2d(cin, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.ReLU(inplace=True)]
            cin = hidden
        layers.append(nn.Conv2d(cin, dim, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, features: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """features [(B, C_l, h_l, w_l)], coords (B, 3, h, w) -> (B, dim, h, w), unit length."""
        levels = fuse_levels(features, tuple(coords.shape[-2:]))
        fused = sum(lat(f) for lat, f in zip(self.lateral, levels, strict=True))
        x = torch.cat([fused, coords.to(fused.dtype)], dim=1) if self.use_coords else fused
        learned = unit_channels(self.body(x))
        if self.skip is None:
            return learned
        # cos(a, b) = (cos_learned + skip^2 cos_untrained) / (1 + skip^2); the levels are upsampled
        # once. Both parts have unit length before weighting, so the whole has sqrt(1 + skip^2):
        # scaled by constants, not measured again.
        norm = (1.0 + self.skip_weight**2) ** 0.5
        untrained = self.skip.combine(levels, self.skip_weight / norm).to(learned.dtype)
        return torch.cat([learned / norm, untrained], dim=1)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved in every model file and checkpoint."""

    backbone: str = "efficientnet_lite0"
    # A backbone whose weights the user supplies (deeplab_resnet101) is rebuilt from this path.
    backbone_weights: str | None = None
    head: str = "features"  # "features" (untrained) or "embedding" (trained)
    dim: int = 128
    hidden: int = 128
    depth: int = 3
    use_coords: bool = True
    skip: float = 0.0  # weight of the untrained features kept beside the learned embedding (0: none)
    train_backbone: bool = False
    # With train_backbone: fine-tune only the backbone layers whose output stride is at least this
    # (0: the whole backbone). Only those layers are then saved in a model file.
    train_backbone_from: int = 0
    # Inference settings the model was tuned with; a session starts from these.
    inference: dict = field(default_factory=dict)


class EmbeddingModel(nn.Module):
    """Backbone + head. ``embed`` is the only inference entry point."""

    def __init__(self, backbone: Backbone, head: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config

    @property
    def dim(self) -> int:
        return int(self.head.dim)

    def embed(self, image: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 255], H and W multiples of 32 -> (B, D, H/8, W/8) unit vectors.

        ``t`` is the normalised time of the frame(s): a float, or a (B,) tensor.
        """
        b, _, h, w = image.shape
        gh, gw = h // OUTPUT_STRIDE, w // OUTPUT_STRIDE
        ts = torch.as_tensor(t, dtype=torch.float32, device=image.device).reshape(-1).expand(b)
        coords = torch.stack([coordinate_grid(gh, gw, float(tt), device=image.device) for tt in ts])
        return self.embed_at(image, coords)

    def embed_at(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` given the (B, 3, H/8, W/8) coordinate grid (:func:`coordinate_grid`)."""
        return self.head(self.backbone(self.backbone.normalisation.apply(image)), coords)


def trained_backbone_state(model: EmbeddingModel) -> dict[str, torch.Tensor] | None:
    """The backbone weights training changes (None for a frozen backbone): those of every feature
    layer, or only of the layers from ``train_backbone_from`` on; the rest are the pretrained
    weights, rebuilt on load. A classifier the features do not use (EfficientNet's) is never trained:
    it would get no gradient, which DistributedDataParallel rejects, and would bloat the model file."""
    if not model.config.train_backbone:
        return None
    state = model.backbone.state_dict()
    prefixes = tuple(f"{name}." for name in model.backbone.layers_from(model.config.train_backbone_from))
    if not prefixes:
        raise VosError(f"The backbone has no layers at stride {model.config.train_backbone_from} or coarser.")
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def make_head(config: ModelConfig, levels: tuple[FeatureLevel, ...]) -> nn.Module:
    if config.head == "features":
        return FeatureHead(levels)
    if config.head == "embedding":
        return EmbeddingHead(
            levels,
            dim=config.dim,
            hidden=config.hidden,
            depth=config.depth,
            use_coords=config.use_coords,
            skip=config.skip,
        )
    raise VosError(f"Unknown head '{config.head}'; choose 'features' or 'embedding'.")


def create_model(config: ModelConfig, *, pretrained: bool = True) -> EmbeddingModel:
    extra = {"weights": config.backbone_weights} if config.backbone_weights else {}
    backbone = create_backbone(config.backbone, pretrained=pretrained, **extra)
    return EmbeddingModel(backbone, make_head(config, backbone.levels), config)
