"""Trainer: the loss against a brute-force reference, data, gradients, DDP on CPU, resume, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from typer.testing import CliRunner

import trainer.train as train_module
from engine.errors import VosError
from engine.factory import build_model
from engine.model import TIME_HORIZON, ModelConfig, create_model
from engine.session import session_config_for
from trainer.cache import FeatureCacheSet
from trainer.checkpoint import load_checkpoint
from trainer.data import IGNORE, DavisTrainingSet, load_sequence, split_sequences
from trainer.loss import anchor_losses, pixelwise_metric_loss, sample_anchors
from trainer.net import TrainingNet, set_trainable_backbone
from trainer.settings import (
    DataSettings,
    LossSettings,
    ModelSettings,
    OptimSettings,
    RunSettings,
    TrainSettings,
    settings_from_dict,
    settings_to_dict,
)
from trainer.train import _build, _dataset, run_training
from vosctl.commands.train import parse_inference, parse_scale, parse_sequence_list, train

CLI_ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}


def make_davis(root: Path, names=("a", "b", "c"), frames: int = 4, size: int = 64, objects: int = 1) -> Path:
    """A tiny DAVIS-layout dataset: textured noise with ``objects`` moving rectangles per frame."""
    for s, name in enumerate(names):
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(s)
        for f in range(frames):
            image = (rng.random((size, size, 3)) * 60 + 40).astype(np.uint8)
            ids = np.zeros((size, size), np.uint8)
            for k in range(objects):
                x = 6 + 3 * f + s + 28 * k
                ids[12 + 8 * k : 36 + 8 * k, x : x + 18] = k + 1
                image[ids == k + 1] = (200, 60 + 80 * k, 50)
            Image.fromarray(image).save(root / "JPEGImages" / "480p" / name / f"{f:05d}.jpg")
            if objects == 1:
                Image.fromarray(ids * 255).save(root / "Annotations" / "480p" / name / f"{f:05d}.png")
            else:
                mask = Image.fromarray(ids, mode="P")
                mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
                mask.save(root / "Annotations" / "480p" / name / f"{f:05d}.png")
    return root


def tiny_settings(root: Path, out: Path, **run) -> TrainSettings:
    run_settings = dict(steps=4, workers=0, val_every=0, checkpoint_every=0, log_every=1, progress=False)
    run_settings |= dict(val_max_size=64, threads=1)
    run_settings |= run
    return TrainSettings(
        data=DataSettings(root=root, val_sequences=("c",), crop=64, scale=(1.0, 1.0)),
        model=ModelSettings(backbone="tiny", hidden=16, dim=8),
        optim=OptimSettings(batch_size=2, warmup=1),
        run=RunSettings(out=out, **run_settings),
    )


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> Path:
    return make_davis(tmp_path_factory.mktemp("davis"))


# ---- loss ----------------------------------------------------------------------------------------


def brute_force(anchors, anchor_labels, pool, pool_labels, margin):
    """The loss written as the definition reads, one anchor and one candidate at a time."""
    losses = []
    for a, la in zip(anchors.tolist(), anchor_labels.tolist(), strict=True):
        pos, neg = [], []
        for p, lp in zip(pool.tolist(), pool_labels.tolist(), strict=True):
            if lp == IGNORE:
                continue
            d = sum((x - y) ** 2 for x, y in zip(a, p, strict=True))
            (pos if lp == la else neg).append(d)
        if pos and neg:
            losses.append(max(0.0, min(pos) - min(neg) + margin))
    return losses


def hand_built_embeddings():
    """Nine anchors and twelve pool pixels in 4-d, three labels (two objects) and IGNORE; label 3
    has no pool pixel, so its anchor is skipped. -> anchors, anchor_labels, pool, pool_labels."""
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(9, 4), dim=1)
    pool = F.normalize(torch.randn(12, 4), dim=1)
    anchor_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1])
    pool_labels = torch.tensor([0, 1, 2, 0, 1, 2, IGNORE, 0, 1, 2, IGNORE, 0])
    return anchors, anchor_labels, pool, pool_labels


def test_loss_equals_brute_force_on_hand_built_embeddings():
    anchors, anchor_labels, pool, pool_labels = hand_built_embeddings()
    pool[0], pool[1] = anchors[0], anchors[2]  # two anchors with a same-label twin in the pool
    got = anchor_losses(anchors, anchor_labels, pool, pool_labels, margin=0.3)
    want = brute_force(anchors, anchor_labels, pool, pool_labels, 0.3)
    assert len(want) == 8  # the label-3 anchor has no positive
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert 0 < sum(w > 0 for w in want) < len(want)  # both active and satisfied anchors


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
    anchors, anchor_labels, pool, pool_labels = hand_built_embeddings()
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


def test_loss_on_frames_uses_frame_zero_as_anchors_and_the_rest_as_pool():
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(1, 3, 4, 3, 3), dim=2)  # (B, F, D, h, w)
    labels = torch.randint(0, 3, (1, 3, 3, 3))
    labels[0, 1, 0, 0] = IGNORE
    out = pixelwise_metric_loss(
        emb, labels, anchors_per_label=1000, margin=0.5, generator=torch.Generator().manual_seed(0)
    )
    anchors = emb[0, 0].flatten(1).T
    pool = emb[0, 1:].permute(0, 2, 3, 1).reshape(-1, 4)
    want = brute_force(anchors, labels[0, 0].flatten(), pool, labels[0, 1:].flatten(), 0.5)
    assert out.anchors == len(want)
    assert float(out.loss) == pytest.approx(float(np.mean(want)), abs=1e-5)


def test_anchors_are_capped_per_label_and_skip_ignored_pixels():
    labels = torch.tensor([0] * 50 + [1] * 3 + [IGNORE] * 10 + [2] * 20)
    idx = sample_anchors(labels, 8, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx] + 1)
    assert counts.tolist() == [0, 8, 3, 8]


def test_gradients_reach_the_head_but_not_the_frozen_backbone():
    model = create_model(ModelConfig(backbone="tiny", head="embedding", hidden=16, dim=8))
    model.backbone.requires_grad_(False)
    net = TrainingNet(model)
    images = torch.rand(6, 3, 64, 64) * 255
    emb = net(images, torch.zeros(6)).unflatten(0, (2, 3))
    labels = torch.zeros(2, 3, 8, 8, dtype=torch.long)
    labels[:, :, 2:6, 2:6] = 1
    out = pixelwise_metric_loss(emb, labels, anchors_per_label=16, margin=2.0, generator=torch.Generator())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_partial_fine_tuning_trains_only_the_coarse_layers_and_saves_only_them(davis, tmp_path):
    settings = tiny_settings(davis, tmp_path / "run", stop_after=2)
    settings = replace(settings, model=replace(settings.model, train_backbone=True, train_backbone_from=16))
    stock = create_model(settings.model.model_config(), pretrained=True).backbone.state_dict()
    paused = run_training(settings=settings)
    saved = load_checkpoint(paused.checkpoint)
    # The tiny backbone's layers: "stem" (stride 8) stays frozen, "down" (stride 16) trains.
    assert set(saved["backbone"]) == {k for k in stock if k.startswith("down.")}
    assert any(not torch.equal(saved["backbone"][k], stock[k]) for k in saved["backbone"])
    model, *_ = _build(replace(settings, resume=paused.checkpoint), torch.device("cpu"))
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())
    assert all(p.requires_grad for p in model.backbone.down.parameters())
    assert_same_state(model.backbone.state_dict(), {**stock, **saved["backbone"]})
    finished = run_training(
        settings=replace(settings, resume=paused.checkpoint, run=replace(settings.run, stop_after=None))
    )
    loaded = build_model(finished.model)
    assert_same_state(
        {k: v for k, v in loaded.backbone.state_dict().items() if k.startswith("stem.")},
        {k: v for k, v in stock.items() if k.startswith("stem.")},
    )
    with pytest.raises(VosError, match="needs --train-backbone"):
        ModelSettings(train_backbone_from=16)


def test_cached_features_train_the_coarse_layers_computed_again_from_the_stored_level(davis, tmp_path):
    settings = tiny_settings(davis, tmp_path / "run")
    settings = replace(
        settings,
        data=replace(settings.data, cache_features=True, sequences=("a", "b")),
        model=replace(settings.model, train_backbone=True, train_backbone_from=16),
    )
    stock = create_model(settings.model.model_config(), pretrained=True).backbone.state_dict()
    # The net takes the stored stride-8 level and computes stride 16 again, as from the images.
    model, *_ = _build(settings, torch.device("cpu"))
    net = TrainingNet(model)
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        stored = model.backbone(model.backbone.normalisation.apply(images))
    emb = net(None, torch.zeros(2), [stored[0].half(), torch.zeros_like(stored[1])])
    torch.testing.assert_close(emb, net(images, torch.zeros(2)), atol=5e-3, rtol=5e-3)
    emb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.down.parameters())
    assert all(p.grad is None for p in model.backbone.stem.parameters())
    # A run: the coarse layer learns and is saved, the fine one is the stock one.
    finished = run_training(settings=settings)
    loaded = build_model(finished.model)
    assert any(not torch.equal(v, stock[k]) for k, v in loaded.backbone.state_dict().items() if k.startswith("down."))
    assert_same_state(
        {k: v for k, v in loaded.backbone.state_dict().items() if k.startswith("stem.")},
        {k: v for k, v in stock.items() if k.startswith("stem.")},
    )
    # Cached features with every layer trained, or none of the cache's levels frozen: one clear error.
    whole = replace(settings, model=replace(settings.model, train_backbone_from=0))
    with pytest.raises(VosError, match="fine layers frozen"):
        run_training(settings=whole)
    every = replace(settings, model=replace(settings.model, train_backbone_from=8))
    with pytest.raises(VosError, match="fine layers frozen"):
        run_training(settings=every)


# ---- data ----------------------------------------------------------------------------------------


def test_samples_are_deterministic_whatever_the_worker_count(davis):
    seqs = [load_sequence(davis, n) for n in ("a", "b")]
    ds = DavisTrainingSet(seqs, crop=64, frames_per_sample=3, scale=(0.8, 1.2), jitter=0.3, seed=3)
    one, again = ds[5], ds[5]
    assert one["images"].shape == (3, 3, 64, 64) and one["images"].dtype == torch.uint8
    assert one["labels"].shape == (3, 8, 8) and set(one["labels"].unique().tolist()) <= {IGNORE, 0, 1}
    assert torch.equal(one["images"], again["images"]) and torch.equal(one["labels"], again["labels"])
    assert not torch.equal(ds[6]["images"], one["images"])
    # The spawned worker runs from a fresh interpreter: this process, after the suite's earlier tests
    # (OpenVINO and its threads loaded), crashed now and then while receiving the worker's batch.
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from trainer.data import DavisTrainingSet, load_sequence, make_loader\n"
        "root = Path(sys.argv[1])\n"
        "seqs = [load_sequence(root, n) for n in ('a', 'b')]\n"
        "ds = DavisTrainingSet(seqs, crop=64, frames_per_sample=3, scale=(0.8, 1.2), jitter=0.3, seed=3)\n"
        "b = [next(iter(make_loader(ds, batch_size=2, first_step=1, steps=2, workers=w, pin=False))) for w in (0, 1)]\n"
        "assert torch.equal(b[0]['images'], b[1]['images'])\n"
        "assert torch.equal(b[0]['images'][0], ds[2]['images'])  # step 1 starts at sample 2\n"
        "print('same batches')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(davis)], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert run.returncode == 0 and "same batches" in run.stdout, run.stderr[-2000:]


def test_multi_object_palette_masks_keep_their_objects(tmp_path):
    root = make_davis(tmp_path, names=("m",), objects=2)
    ds = DavisTrainingSet([load_sequence(root, "m")], crop=64, frames_per_sample=2, scale=(1, 1), jitter=0, seed=0)
    assert set(ds[0]["labels"].unique().tolist()) == {0, 1, 2}


def test_feature_cache_is_taken_at_the_size_the_model_will_run_at(davis, tmp_path):
    settings = tiny_settings(davis, tmp_path)
    settings = replace(
        settings,
        data=replace(settings.data, cache_features=True, sequences=("a", "b")),
        model=replace(settings.model, inference={"max_size": 32}),
    )
    model = create_model(settings.model.model_config())
    dataset, _, _ = _dataset(settings, model, torch.device("cpu"), 0)
    assert dataset[0]["labels"].shape[-2:] == (4, 4)  # 64x64 frames cached at 32x32: a 4x4 grid
    pinned = replace(settings, data=replace(settings.data, cache_max_size=64))
    assert _dataset(pinned, model, torch.device("cpu"), 0)[0][0]["labels"].shape[-2:] == (8, 8)


def test_feature_cache_gives_the_backbone_features_of_whole_frames(davis, tmp_path):
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    seqs = [load_sequence(davis, "a")]
    cache = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, store=tmp_path)
    sample = cache[0]
    assert [f.shape for f in sample["features"]] == [(3, 8, 8, 8), (3, 16, 4, 4)]
    assert sample["labels"].shape == (3, 8, 8) and sample["t"].min() == 0
    assert set((sample["t"] * 100).round().tolist()) <= {0.0, 2.0}  # frames 0 and 2 only
    with torch.no_grad():
        direct = model.backbone(model.backbone.normalisation.apply(cache_frame(seqs[0], 2)))
    torch.testing.assert_close(cache.features[0][1][1:2].float(), direct[1], atol=2e-3, rtol=2e-3)
    # A second set reads the stored features instead of running the backbone.
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    model.backbone.stem[0].weight.data.zero_()
    again = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, store=tmp_path)
    assert torch.equal(again.features[0][0], cache.features[0][0])
    # Crops keep whole cells of the coarsest level; flips mirror features and labels together.
    cropped = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, crop=0.5, flip=True)
    sample = cropped[1]
    assert [f.shape for f in sample["features"]] == [(3, 8, 4, 4), (3, 16, 2, 2)]
    assert sample["labels"].shape == (3, 4, 4)


def test_stored_features_are_not_reused_for_other_frames_of_the_same_name(tmp_path):
    """Stored files are named by sequence; another copy of the sequence under the same name (here
    with other frames, as after a video codec) or a rewritten mask is computed afresh."""
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    first = make_davis(tmp_path / "one", names=("a",))
    second = make_davis(tmp_path / "two", names=("a",))
    for frame in sorted((second / "JPEGImages" / "480p" / "a").glob("*.jpg")):
        Image.fromarray(255 - np.array(Image.open(frame))).save(frame)
    store = tmp_path / "store"

    def cached(root: Path) -> FeatureCacheSet:
        return FeatureCacheSet(
            [load_sequence(root, "a")], model, frames_per_sample=3, max_size=64, every=1, seed=0, store=store
        )

    one, two = cached(first), cached(second)
    assert not torch.equal(one.features[0][0], two.features[0][0])
    assert torch.equal(cached(second).features[0][0], two.features[0][0])  # the same frames: read back
    mask = sorted((second / "Annotations" / "480p" / "a").glob("*.png"))[1]
    Image.fromarray(np.zeros_like(np.array(Image.open(mask)))).save(mask)
    os.utime(mask, ns=(0, 10**18))  # a rewrite, whatever the file system's clock resolution
    assert not torch.equal(cached(second).labels[0], two.labels[0])


def cache_frame(seq, index: int) -> torch.Tensor:
    """(1, 3, H, W) float frame ``index`` of ``seq``, as the cache reads it (64 px: no resize)."""
    return torch.from_numpy(np.array(Image.open(seq.frames[index]).convert("RGB"))).permute(2, 0, 1)[None].float()


# ---- training runs -------------------------------------------------------------------------------


def test_two_cpu_processes_end_in_sync_with_one_checkpoint(davis, tmp_path):
    settings = tiny_settings(davis, tmp_path / "run", steps=3, nproc=2)
    settings = replace(settings, model=replace(settings.model, inference={"k": 3, "refine": "none"}))
    result = run_training(settings=settings)
    assert result.finished and result.step == 3
    assert len(result.param_hashes) == 2 and result.param_hashes[0] == result.param_hashes[1]
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["best.pt", "checkpoint.pt", "metrics.jsonl", "model.pt"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2
    assert records[-1]["param_hashes"] == result.param_hashes
    assert any("val_J" in r for r in records)
    # Both files load through the engine's factory, as --model takes them.
    for name in ("model.pt", "checkpoint.pt"):
        model = build_model(tmp_path / "run" / name)
        assert model.config.head == "embedding" and model.dim == 8
        # The session settings given with --infer travel in the file.
        config = session_config_for(model)
        assert config.retrieval.k == 3 and config.refine == "none"


def test_resume_continues_exactly_where_the_run_stopped(davis, tmp_path):
    straight = run_training(settings=tiny_settings(davis, tmp_path / "straight"))
    paused = run_training(settings=tiny_settings(davis, tmp_path / "paused", stop_after=2))
    assert not paused.finished and paused.model is None
    saved = load_checkpoint(paused.checkpoint)
    assert saved["step"] == 2

    # The saved optimiser state comes back exactly.
    settings = replace(tiny_settings(davis, tmp_path / "x"), resume=paused.checkpoint)
    model, _, optimizer, _, _, _, start = _build(settings, torch.device("cpu"))
    assert start == 2
    assert_same_state(optimizer.state_dict(), saved["optimizer"])

    # The data settings come from the checkpoint, so a resumed run may omit --data.
    resume = replace(tiny_settings(None, tmp_path / "paused"), resume=paused.checkpoint)
    resumed = run_training(settings=resume)
    assert resumed.finished and resumed.step == 4
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert_same_state(a["head"], b["head"])
    assert_same_state(a["optimizer"], b["optimizer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert settings_from_dict(b["settings"]).data.root == davis


def assert_same_state(a, b) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def test_settings_survive_the_checkpoint_round_trip(tmp_path):
    settings = tiny_settings(tmp_path, tmp_path / "out", stop_after=3)
    settings = replace(settings, model=replace(settings.model, skip=0.5, inference={"spatial_weight": 1.0}))
    settings = replace(settings, loss=LossSettings(kind="vote", vote_k=3, vote_temperature=0.1))
    assert settings_from_dict(settings_to_dict(settings)) == settings


def test_bad_loss_settings_are_refused():
    with pytest.raises(VosError, match="Unknown --loss 'nca'; choose one of: triplet, vote"):
        LossSettings(kind="nca")
    with pytest.raises(VosError, match="--vote-temperature must be positive"):
        LossSettings(kind="vote", vote_temperature=0.0)


# ---- errors --------------------------------------------------------------------------------------


def test_bad_data_folders_raise_one_clear_error(tmp_path, davis):
    with pytest.raises(VosError, match="does not exist"):
        split_sequences(tmp_path / "missing", (), ())
    with pytest.raises(VosError, match="not in the DAVIS layout"):
        split_sequences(tmp_path, (), ())
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    with pytest.raises(VosError, match="no sequence"):
        split_sequences(tmp_path, (), ())
    with pytest.raises(VosError, match="'zebra' is not under"):
        split_sequences(davis, (), ("zebra",))
    with pytest.raises(VosError, match="both training and validation"):
        split_sequences(davis, ("a",), ("a",))


def test_cli_reports_bad_data_in_one_line(tmp_path):
    app = typer.Typer()
    app.command()(train)
    result = CliRunner().invoke(app, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], env=CLI_ENV)
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output
    help_text = CliRunner().invoke(app, ["--help"], env=CLI_ENV).output
    assert "torchrun --nnodes 2 --nproc-per-node 8" in help_text


def test_inference_settings_parse_as_json_values_or_text_and_unknown_ones_fail(tmp_path):
    assert parse_inference(["spatial_weight=1.5", "refine=none", "online=false", "k=7"]) == {
        "spatial_weight": 1.5,
        "refine": "none",
        "online": False,
        "k": 7,
    }
    with pytest.raises(VosError, match="NAME=VALUE"):
        parse_inference(["spatial_weight"])
    app = typer.Typer()
    app.command()(train)
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "o"), "--infer", "radius=3"], env=CLI_ENV)
    assert result.exit_code == 1
    assert "Unknown session setting 'radius'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_sequence_lists_come_as_commas_or_files(tmp_path):
    assert parse_sequence_list("bear, boat") == ("bear", "boat")
    listing = tmp_path / "val.txt"
    listing.write_text("/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png\nboat\n")
    assert parse_sequence_list(str(listing)) == ("bear", "boat")


def test_sample_times_follow_the_frame_numbers_when_frames_were_skipped(tmp_path):
    root = make_davis(tmp_path / "d", names=("a",), frames=6)
    for f in (1, 3, 5):  # a folder that keeps every other frame
        (root / "JPEGImages" / "480p" / "a" / f"{f:05d}.jpg").unlink()
        (root / "Annotations" / "480p" / "a" / f"{f:05d}.png").unlink()
    seq = load_sequence(root, "a")
    assert seq.numbers == (0, 2, 4)
    dataset = DavisTrainingSet([seq], crop=64, frames_per_sample=3, scale=(1.0, 1.0), jitter=0.0, seed=0)
    cache = FeatureCacheSet([seq], create_model(ModelConfig(backbone="tiny", head="embedding")), frames_per_sample=3,
                            max_size=64, every=1, seed=0)  # fmt: skip
    for index in range(4):
        for samples in (dataset, cache):  # augmented frames and cached features alike
            times = sorted(round(float(t) * TIME_HORIZON) for t in samples[index]["t"])
            assert times == [0, 2, 4]


def test_full_fine_tuning_leaves_the_unused_classifier_without_gradients():
    config = ModelSettings(train_backbone=True).model_config()
    model = create_model(replace(config, backbone="efficientnet_lite0"), pretrained=False)
    set_trainable_backbone(model)
    assert not model.backbone._fc.weight.requires_grad and not model.backbone._conv_head.weight.requires_grad
    assert all(p.requires_grad for p in model.backbone._blocks.parameters())


def test_scale_range_parses_and_bad_ones_fail_in_one_line(tmp_path):
    assert parse_scale("0.73,1.2") == (0.73, 1.2)
    app = typer.Typer()
    app.command()(train)
    for value, message in (("0.9", "--scale takes MIN,MAX"), ("0.9,0.5", "positive and increasing")):
        result = CliRunner().invoke(app, ["--out", str(tmp_path / "o"), "--scale", value], env=CLI_ENV)
        assert result.exit_code == 1
        assert message in result.output and "Traceback" not in result.output


def test_validation_during_training_leaves_no_exported_graphs(davis, tmp_path, monkeypatch):
    """The weights change between validations: exporting a graph for the CPU runtimes each time
    would cost seconds and leave a file per validation in the user's cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VOSCTL_CACHE", str(cache))
    validated = []
    real = train_module._validate
    monkeypatch.setattr(train_module, "_validate", lambda *a: validated.append(1) or real(*a))
    run_training(settings=tiny_settings(davis, tmp_path / "run", val_every=2))
    assert validated
    assert not cache.exists() or not any(cache.iterdir())
