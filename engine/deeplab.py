"""DeepLab-v2 ResNet-101 (Chen et al. 2017), the backbone of the paper, registered as ``deeplab_resnet101``.

The network is the Caffe model as ported by speedinghzl/Pytorch-Deeplab, so that its published
weights (``MS_DeepLab_resnet_trained_VOC.pth``, ``deeplabv2_voc.pth``) load key for key:

- the stride of a bottleneck sits on its FIRST 1x1 convolution (Caffe), not on the 3x3;
- the max pool rounds up (``ceil_mode=True``);
- layer3 and layer4 keep stride 8 and dilate their 3x3 convolutions by 2 and 4;
- input is BGR in [0, 255] minus the Caffe mean (104.008, 116.669, 122.675), no division;
- BatchNorm is frozen: running statistics are never updated, even when the rest is fine-tuned,
  because the published statistics were computed on far larger batches than we train with.

Nothing is downloaded: the user passes the path of the weights file. Its keys may carry the
``Scale.`` prefix of the multi-scale wrapper or not; the ASPP classifier (``layer5.*``) is dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.backbones import Backbone, FeatureLevel, Normalisation, register_backbone
from engine.errors import VosError

# (planes, blocks, stride, dilation) of layer1..layer4 of ResNet-101.
_LAYERS = ((64, 3, 1, 1), (128, 4, 2, 1), (256, 23, 1, 2), (512, 3, 1, 4))
_EXPANSION = 4
_PREFIX = "Scale."
_DROPPED = ("layer5.",)  # the ASPP classifier of the segmentation model


class Bottleneck(nn.Module):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1, with a projected shortcut where shapes change."""

    def __init__(
        self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1, downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * _EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * _EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class DeepLabResNet101(Backbone):
    """Returns layer2 (512 channels) and layer4 (2048 channels), both at stride 8."""

    normalisation = Normalisation(mean=(104.008, 116.669, 122.675), std=(1.0, 1.0, 1.0), bgr=True)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        inplanes = 64
        stages = []
        for planes, blocks, stride, dilation in _LAYERS:
            # As in the Caffe model, the dilated layers get a projected shortcut even where the
            # shapes would allow an identity one.
            downsample = None
            if stride != 1 or inplanes != planes * _EXPANSION or dilation in (2, 4):
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes * _EXPANSION, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * _EXPANSION),
                )
            layer = [Bottleneck(inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
            inplanes = planes * _EXPANSION
            layer += [Bottleneck(inplanes, planes, dilation=dilation, downsample=None) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.levels = (FeatureLevel(512, 8), FeatureLevel(2048, 8))
        self.layer_strides = {"conv1": 2, "bn1": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabResNet101:
        """Switch the convolutions' mode; BatchNorm stays in eval mode (frozen statistics)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised BGR -> [(B, 512, h, w), (B, 2048, h, w)], h ~ H/8 (Caffe rounding)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        x = self.layer1(x)
        mid = self.layer2(x)
        return [mid, self.layer4(self.layer3(mid))]


def convert_deeplab_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict:
    """Published Pytorch-Deeplab keys -> this module's keys, or VosError naming what does not fit.

    ``Scale.`` is stripped, ``layer5.*`` (ASPP) dropped, and ``num_batches_tracked`` counters,
    which files saved before PyTorch 0.4 lack, are taken from the module.
    """
    converted = {}
    for key, value in state.items():
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        if name.startswith(_DROPPED) or not isinstance(value, torch.Tensor):
            continue
        converted[name] = value
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            converted.setdefault(key, value)
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if missing or unexpected:
        raise VosError(
            "The file is not a DeepLab-v2 ResNet-101 state dict "
            f"({len(missing)} keys missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})."
        )
    wrong = [k for k, v in converted.items() if v.shape != own[k].shape]
    if wrong:
        raise VosError(
            f"The DeepLab weights have {len(wrong)} tensors of the wrong shape, e.g. {wrong[0]} is "
            f"{tuple(converted[wrong[0]].shape)} instead of {tuple(own[wrong[0]].shape)}."
        )
    return converted


def load_deeplab_weights(net: DeepLabResNet101, path: str | Path) -> None:
    """Load ``MS_DeepLab_resnet_trained_VOC.pth`` / ``deeplabv2_voc.pth`` into ``net`` (CPU, weights only)."""
    from engine.factory import read_torch_file  # factory imports the model, which imports this module

    path = Path(path)
    state = read_torch_file(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VosError(f"{path} does not hold a state dict.")
    own = net.state_dict()
    converted = convert_deeplab_state(state, own)
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()}, strict=True)


@register_backbone("deeplab_resnet101")
def deeplab_resnet101(*, pretrained: bool = True, weights: str | Path | None = None) -> Backbone:
    """The paper's backbone; ``pretrained`` needs ``weights``, the path of the published file."""
    net = DeepLabResNet101()
    if pretrained:
        if weights is None:
            raise VosError(
                "The DeepLab ResNet-101 backbone needs its weights file: pass --backbone-weights "
                "PATH (MS_DeepLab_resnet_trained_VOC.pth or deeplabv2_voc.pth)."
            )
        load_deeplab_weights(net, weights)
    return net.eval()
