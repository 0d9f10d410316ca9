"""DeepLab-v2 ResNet-101: the Caffe structure and the loader of the published Pytorch-Deeplab weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.backbones import EfficientNetLite, backbone_names, create_backbone
from engine.deeplab import DeepLabResNet101
from engine.errors import VosError
from engine.factory import build_model, save_model_file
from engine.model import ModelConfig, create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def net() -> DeepLabResNet101:
    torch.manual_seed(0)
    return DeepLabResNet101().eval()


@pytest.fixture(scope="module")
def published(net) -> dict[str, torch.Tensor]:
    """The net's weights under the published key names (with ``Scale.``, ASPP included), randomised,
    as the PyTorch 0.3 file holds them (no ``num_batches_tracked``)."""
    gen = torch.Generator().manual_seed(1)
    state = {
        f"Scale.{k}": torch.rand(v.shape, generator=gen) + 0.5
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    for rate in range(4):
        state[f"Scale.layer5.conv2d_list.{rate}.weight"] = torch.rand(21, 2048, 3, 3, generator=gen)
        state[f"Scale.layer5.conv2d_list.{rate}.bias"] = torch.rand(21, generator=gen)
    return state


def test_is_registered_with_stride_8_levels():
    assert "deeplab_resnet101" in backbone_names()
    backbone = create_backbone("deeplab_resnet101", pretrained=False)
    assert [(level.channels, level.stride) for level in backbone.levels] == [(512, 8), (2048, 8)]
    assert backbone.normalisation.bgr and backbone.normalisation.std == (1.0, 1.0, 1.0)
    assert backbone.normalisation.mean == (104.008, 116.669, 122.675)


def test_has_the_caffe_structure(net):
    first = net.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # stride on the 1x1
    assert net.maxpool.ceil_mode
    assert {b.conv2.dilation for b in net.layer3} == {(2, 2)} and {b.conv2.dilation for b in net.layer4} == {(4, 4)}
    assert len(net.layer3) == 23 and net.layer3[0].downsample is not None
    with torch.no_grad():
        mid, deep = net(torch.zeros(1, 3, 64, 64))
    # Caffe rounding: 64 -> 32 -> 17 (ceil) -> 9, and no further downsampling.
    assert mid.shape == (1, 512, 9, 9) and deep.shape == (1, 2048, 9, 9)
    net.train()
    assert not any(m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(p.requires_grad for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    net.eval()


@pytest.mark.parametrize("prefix", ["Scale.", ""])
def test_loads_the_published_key_names(published, tmp_path, prefix):
    state = {prefix + k.removeprefix("Scale."): v for k, v in published.items()}
    path = tmp_path / "MS_DeepLab_resnet_trained_VOC.pth"
    torch.save(state, path)
    backbone = create_backbone("deeplab_resnet101", pretrained=True, weights=str(path))
    own = backbone.state_dict()
    loaded = [k for k in own if not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(published) - 8  # every key but the ASPP ones
    for key in loaded:
        assert torch.equal(own[key], published["Scale." + key]), key


def test_rejects_foreign_files_with_a_clear_error(tmp_path):
    foreign = tmp_path / "efficientnet.pth"
    torch.save(EfficientNetLite("lite0").state_dict(), foreign)
    with pytest.raises(VosError, match=r"not a DeepLab-v2 ResNet-101 state dict \(\d+ keys missing"):
        create_backbone("deeplab_resnet101", weights=str(foreign))
    junk = tmp_path / "junk.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, junk)
    with pytest.raises(VosError, match="missing"):
        create_backbone("deeplab_resnet101", weights=str(junk))
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(VosError, match="not a readable weights file"):
        create_backbone("deeplab_resnet101", weights=str(text))
    with pytest.raises(VosError, match="does not exist"):
        create_backbone("deeplab_resnet101", weights=str(tmp_path / "none.pth"))
    with pytest.raises(VosError, match="--backbone-weights"):
        create_backbone("deeplab_resnet101")


def test_rejects_tensors_of_the_wrong_shape(published, tmp_path):
    state = dict(published)
    state["Scale.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(VosError, match="wrong shape, e.g. conv1.weight"):
        create_backbone("deeplab_resnet101", weights=str(path))


def test_a_model_file_rebuilds_the_backbone_from_its_weights_path(published, tmp_path: Path):
    weights = tmp_path / "deeplabv2_voc.pth"
    torch.save(published, weights)
    config = ModelConfig(backbone="deeplab_resnet101", backbone_weights=str(weights), head="embedding", dim=8)
    model = create_model(config)
    path = tmp_path / "model.pt"
    save_model_file(model, path)
    assert path.stat().st_size < 2_000_000  # the head only: the backbone comes from its file
    rebuilt = build_model(path)
    assert torch.equal(rebuilt.backbone.conv1.weight, published["Scale.conv1.weight"])
    with torch.no_grad():
        assert rebuilt.embed(torch.rand(1, 3, 64, 64) * 255).shape == (1, 8, 8, 8)


def test_the_registry_alone_knows_the_deeplab_backbone():
    # A fresh interpreter: this test process has imported engine.deeplab already.
    code = "from engine.backbones import backbone_names; print(backbone_names())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "deeplab_resnet101" in out.stdout
