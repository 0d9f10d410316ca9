"""Pseudo-videos from single frames (trainer.pseudo_video, FeatureCacheSet(pseudo=...))."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import VosError
from engine.model import ModelConfig, create_model
from tests.test_trainer import make_davis
from trainer.cache import FeatureCacheSet, _read_resized
from trainer.data import IGNORE, load_sequence
from trainer.pseudo_video import view_rng, warp_views
from trainer.settings import DataSettings


def square_frame(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A red square (object 1) on a grey frame: one colour inside, another outside."""
    image = np.full((size, size, 3), 90, np.uint8)
    labels = np.zeros((size, size), np.int64)
    labels[30:60, 36:66] = 1
    image[labels == 1] = (220, 40, 30)
    return image, labels


def core(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` whose 3x3 neighbourhood lies in it (no blended edge)."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.erode(region.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def test_labels_follow_the_warped_image():
    image, labels = square_frame()
    views = warp_views(image, labels, view_rng(0, "seq", 5), 6)
    areas = []
    for view, moved in views:
        assert view.shape == image.shape and view.dtype == np.uint8 and moved.shape == labels.shape
        inside, outside = core(moved == 1), core(moved == 0)
        assert inside.any() and outside.any()
        # Colour jitter acts on the whole view alike: each region stays one colour, and the object's
        # stays the redder of the two.
        assert np.ptp(view[inside].astype(int), axis=0).max() <= 2
        assert np.ptp(view[outside].astype(int), axis=0).max() <= 2
        red = view[..., 0].astype(int) - view[..., 1].astype(int)
        assert red[inside].min() > red[outside].max()
        areas.append(int((moved == 1).sum()))
    assert len(set(areas)) > 1, "each view has its own scale"
    assert any((moved == IGNORE).any() for _, moved in views), "what comes in from beyond the frame is IGNORE"


def test_views_are_a_pure_function_of_seed_sequence_and_frame():
    image, labels = square_frame()
    first = warp_views(image, labels, view_rng(3, "seq", 5), 2)
    again = warp_views(image, labels, view_rng(3, "seq", 5), 2)
    other_frame = warp_views(image, labels, view_rng(3, "seq", 6), 2)
    other_seed = warp_views(image, labels, view_rng(4, "seq", 5), 2)
    for (a, la), (b, lb) in zip(first, again, strict=True):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(first[0][1], other_frame[0][1])
    assert not np.array_equal(first[0][1], other_seed[0][1])


def test_feature_cache_serves_pseudo_videos_of_warped_frames(tmp_path):
    davis = make_davis(tmp_path / "davis", frames=6)
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    seqs = [load_sequence(davis, "a"), load_sequence(davis, "b")]
    store = tmp_path / "store"
    cache = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=1, seed=0, pseudo=1.0, store=store)
    assert cache.pseudo_bases[0] == [0, 3]  # every third cached frame
    assert cache.pseudo_labels[0].shape == (4, 8, 8)  # two views of each
    # A view's features are the backbone's features of the warped frame.
    frame = _read_resized(seqs[0].frames[3], 64)
    labels = (np.array(cv2.imread(str(seqs[0].masks[3]), cv2.IMREAD_GRAYSCALE)) > 0).astype(np.int64)
    view, _ = warp_views(frame, labels, view_rng(0, "a", 3), 2)[0]
    with torch.no_grad():
        direct = model.backbone(
            model.backbone.normalisation.apply(torch.from_numpy(view).permute(2, 0, 1)[None].float())
        )
    torch.testing.assert_close(cache.pseudo_features[0][0][2:3].float(), direct[0], atol=2e-3, rtol=2e-3)
    # Every sample is a pseudo-video: its frames are a cached frame's rows or its views' rows.
    for i in range(6):
        sample = cache[i]
        assert sample["labels"].shape == (3, 8, 8) and float(sample["t"].max()) <= 0.3
        rows = torch.cat([cache.labels[0], cache.pseudo_labels[0], cache.labels[1], cache.pseudo_labels[1]])
        for frame_labels in sample["labels"]:
            assert any(torch.equal(frame_labels, row) for row in rows)
    # Kept in the store: a second set reads the views instead of warping and embedding again.
    model.backbone.stem[0].weight.data.zero_()
    again = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=1, seed=0, pseudo=1.0, store=store)
    assert torch.equal(again.pseudo_features[1][0], cache.pseudo_features[1][0])
    assert len(list(Path(store).rglob("*-every1-views2-seed0.pt"))) == 2


def test_a_share_of_the_samples_are_pseudo_videos(tmp_path):
    davis = make_davis(tmp_path / "davis", frames=6)
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    seqs = [load_sequence(davis, "a"), load_sequence(davis, "b")]
    plain = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=1, seed=0, paste=0.5)
    mixed = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=1, seed=0, paste=0.5, pseudo=0.5)
    assert not plain.pseudo_bases
    # The videos' frames are 0-5 apart (t <= 0.05, up to rounding); a pseudo-video's views up to 30.
    assert all(float(plain[i]["t"].max()) <= 0.051 for i in range(16))
    pseudo = sum(float(mixed[i]["t"].max()) > 0.051 for i in range(16))
    assert 2 <= pseudo <= 14


def test_pseudo_videos_need_cached_features_and_a_share_in_range():
    with pytest.raises(VosError, match="--cache-features"):
        DataSettings(root=Path("."), cache_pseudo=0.3)
    with pytest.raises(VosError, match="pseudo-video"):
        DataSettings(root=Path("."), cache_features=True, cache_pseudo=1.5)
    with pytest.raises(VosError, match="--cache-pseudo-views"):
        DataSettings(root=Path("."), cache_features=True, cache_pseudo=0.3, cache_pseudo_views=0)
    assert DataSettings(root=Path("."), cache_features=True, cache_pseudo=0.3).cache_pseudo == 0.3


def test_views_keep_the_object_ids_of_their_frames(tmp_path):
    """Ids are numbered over all cached frames: a warped frame without object 1 still calls
    object 2 by the label its own cached frame has."""
    davis = make_davis(tmp_path / "davis", names=("m",), frames=6, objects=2)
    masks = sorted((davis / "Annotations" / "480p" / "m").glob("*.png"))
    for index in (0, 3):  # the warped frames (every third): object 1 is not in them
        with Image.open(masks[index]) as image:
            ids = np.array(image)
            palette = image.getpalette()
        ids[ids == 1] = 0
        out = Image.fromarray(ids, mode="P")
        out.putpalette(palette)
        out.save(masks[index])
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    cache = FeatureCacheSet(
        [load_sequence(davis, "m")], model, frames_per_sample=3, max_size=64, every=1, seed=0, pseudo=1.0
    )
    for b, base in enumerate(cache.pseudo_bases[0]):
        own = set(cache.labels[0][base].unique().tolist())
        assert own == {0, 2}
        for v in range(cache.pseudo_views):
            assert set(cache.pseudo_labels[0][b * cache.pseudo_views + v].unique().tolist()) <= own | {IGNORE}
