"""Distractors pasted into cached feature maps (trainer.feature_paste, FeatureCacheSet(paste=...))."""

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import VosError
from engine.model import ModelConfig, create_model
from tests.test_trainer import make_davis
from trainer.cache import FeatureCacheSet
from trainer.data import load_sequence
from trainer.feature_paste import paste_distractor
from trainer.settings import DataSettings

STRIDES = [8, 16, 32]
GRID = (36, 64)


def maps(value: float) -> list[torch.Tensor]:
    gh, gw = GRID
    return [torch.full((3, 4, gh * 8 // s, gw * 8 // s), value) for s in STRIDES]


def host_labels() -> torch.Tensor:
    labels = torch.zeros(3, *GRID, dtype=torch.long)
    labels[:, 10:20, 10:22] = 1
    return labels


def donor_labels() -> torch.Tensor:
    labels = torch.zeros(3, *GRID, dtype=torch.long)
    for t in range(3):  # the donor moves in its own video
        labels[t, 16:32, 40 + 2 * t : 56 + 2 * t] = 1
    return labels


def test_pasted_cells_take_the_donor_features_and_a_label_of_their_own():
    fronts = behinds = 0
    for seed in range(12):
        features, labels = paste_distractor(maps(0.0), host_labels(), maps(1.0), donor_labels(), STRIDES,
                                            np.random.default_rng(seed))  # fmt: skip
        assert set(labels.unique().tolist()) <= {0, 1, 2} and (labels == 2).any()
        # At the grid's own stride the pasted cells are exactly the ones labelled 2.
        assert torch.equal(features[0][:, 0] > 0, labels == 2)
        # Coarser levels are pasted where most of a cell is the donor, with the same offset.
        for f, s in zip(features[1:], STRIDES[1:], strict=True):
            r = s // 8
            majority = torch.nn.functional.avg_pool2d((labels == 2)[:, None].float(), r)[:, 0] > 0.5
            assert torch.equal(f[:, 0] > 0, majority)
        # The donor keeps its own motion: 16x16 cells a frame (less where it is behind the host).
        covered = (labels == 2).sum(dim=(1, 2))
        host_left = (labels == 1).sum()
        if host_left == (host_labels() == 1).sum():
            behinds += 1
        else:
            fronts += 1
        assert covered.max() <= 256
    assert fronts and behinds  # both in front of the host and behind it


def test_a_donor_behind_the_host_never_covers_it():
    for seed in range(12):
        _, labels = paste_distractor(maps(0.0), host_labels(), maps(1.0), donor_labels(), STRIDES,
                                     np.random.default_rng(seed))  # fmt: skip
        hidden = (host_labels() == 1) & (labels != 1)
        if not hidden.any():
            continue
        assert (labels[hidden] == 2).all()  # the host is only ever covered by the donor


def test_a_donor_without_an_object_on_its_first_frame_changes_nothing():
    empty = torch.zeros(3, *GRID, dtype=torch.long)
    features, labels = paste_distractor(maps(0.0), host_labels(), maps(1.0), empty, STRIDES, np.random.default_rng(0))
    assert torch.equal(labels, host_labels()) and all((f == 0).all() for f in features)


def test_the_paste_lands_beside_the_host_object():
    for seed in range(20):
        _, labels = paste_distractor(maps(0.0), host_labels(), maps(1.0), donor_labels(), STRIDES,
                                     np.random.default_rng(seed))  # fmt: skip
        ys, xs = torch.nonzero(labels[0] == 2, as_tuple=True)
        if len(ys):  # the host's centre (15, 16), its span 10 x 12 cells, the offset in 4-cell steps
            assert abs(float(xs.float().mean()) - 16) <= 12 + 4 + 8
            assert abs(float(ys.float().mean()) - 15) <= 7.5 + 4 + 8


def test_feature_cache_pastes_another_sequences_object_deterministically(tmp_path):
    davis = make_davis(tmp_path / "davis")
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    seqs = [load_sequence(davis, "a"), load_sequence(davis, "b")]
    plain = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0)
    pasted = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, paste=1.0)
    again = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, paste=1.0)
    labels = [pasted[i]["labels"] for i in range(8)]
    assert any(int(lab.max()) == int(plain[i]["labels"].max()) + 1 for i, lab in enumerate(labels))
    for i in range(8):
        assert torch.equal(again[i]["labels"], labels[i])
        assert all(torch.equal(x, y) for x, y in zip(again[i]["features"], pasted[i]["features"], strict=True))


def test_pasting_needs_cached_features():
    with pytest.raises(VosError, match="--cache-features"):
        DataSettings(root=Path("."), cache_paste=0.5)
    assert DataSettings(root=Path("."), cache_paste=0.5, cache_features=True).cache_paste == 0.5


def test_several_pasted_objects_each_get_a_label_of_their_own(tmp_path):
    davis = make_davis(tmp_path / "davis", names=("a", "b", "c", "d"))
    model = create_model(ModelConfig(backbone="tiny", head="embedding"))
    seqs = [load_sequence(davis, name) for name in "abcd"]
    one = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, paste=1.0)
    many = FeatureCacheSet(seqs, model, frames_per_sample=3, max_size=64, every=2, seed=0, paste=1.0, paste_objects=3)
    assert max(int(one[i]["labels"].max()) for i in range(12)) <= 2  # the host's object and one donor
    most = [int(many[i]["labels"].max()) for i in range(12)]
    assert max(most) > 2 and max(most) <= 4  # up to three donors, never more
    assert most == [int(many[i]["labels"].max()) for i in range(12)]  # deterministic under the seed


def test_pasted_objects_need_a_positive_count():
    with pytest.raises(VosError, match="--cache-paste-objects"):
        DataSettings(root=Path("."), cache_features=True, cache_paste=0.5, cache_paste_objects=0)
