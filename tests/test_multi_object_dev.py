"""The crowd dev clips: five objects, each visible on the annotated frame, fixed by the seed."""

from __future__ import annotations

import numpy as np

from benchmarks.multi_object_dev import CROWD_FRAMES, MIN_VISIBLE_CROWD, SIZE, make_crowd_clip


def test_a_crowd_clip_holds_five_visible_objects_and_is_fixed_by_its_seed(davis_root):
    images, ids, info = make_crowd_clip(davis_root, "tennis", "hockey", "rhino", np.random.default_rng(0))
    frames = min(CROWD_FRAMES, len(list((davis_root / "JPEGImages" / "480p" / "tennis").glob("*.jpg"))))
    assert len(images) == len(ids) == info["frames"] == frames
    assert images[0].shape == (SIZE[1], SIZE[0], 3) and ids[0].shape == (SIZE[1], SIZE[0])
    assert set(np.unique(np.stack(ids)).tolist()) <= {0, 1, 2, 3, 4, 5}
    assert all(np.count_nonzero(ids[0] == i) >= MIN_VISIBLE_CROWD for i in range(1, 6))
    assert [p["id"] for p in info["look_alikes"]] == [2, 3, 4] and info["alike"] == "hockey"
    _, again, _ = make_crowd_clip(davis_root, "tennis", "hockey", "rhino", np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(ids, again, strict=True))
    _, other, _ = make_crowd_clip(davis_root, "tennis", "hockey", "rhino", np.random.default_rng(1))
    assert not all(np.array_equal(a, b) for a, b in zip(ids, other, strict=True))
