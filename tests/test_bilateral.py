"""Tests of the fast bilateral solver on small synthetic frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from engine.bilateral import BilateralGrid, BilateralParams, band_pixels, refine_probabilities
from engine.bilateral_refiner import BilateralRefiner, top_two_margin
from engine.errors import VosError

H, W = 48, 64
FULL_RES = {"max_side": None}


def _disc() -> np.ndarray:
    """(H, W) bool: a disc left of centre, the 'object' of the synthetic frames."""
    yy, xx = np.mgrid[:H, :W]
    return (xx - 28) ** 2 + (yy - 24) ** 2 < 15**2


# Pairs of (inside, outside) colours. Red / blue differ mostly in chroma (Y = 87.9 and 84.6), the
# greys in luma only, the isoluminant pair in chroma only (Y = 129.9 and 127.7, neighbouring luma bins).
RED_BLUE = ((200, 40, 40), (30, 90, 200))
GREYS = ((70, 70, 70), (170, 170, 170))
ISOLUMINANT = ((200, 100, 100), (80, 148, 148))


def _two_colour(region: np.ndarray, noise: float = 2.0, seed: int = 0, colours: tuple = RED_BLUE) -> np.ndarray:
    """(H, W, 3) uint8: one colour inside ``region``, another outside, with a little sensor-like noise."""
    rng = np.random.default_rng(seed)
    img = np.where(region[..., None], colours[0], colours[1]).astype(np.float64)
    return np.clip(img + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)


def _box_blur(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) float32 separable box blur, so the tests need no image library."""
    out = mask.astype(np.float64)
    kernel = np.ones(2 * radius + 1) / (2 * radius + 1)
    for axis in (0, 1):
        out = np.apply_along_axis(lambda v: np.convolve(np.pad(v, radius, mode="edge"), kernel, "valid"), axis, out)
    return out.astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_constant_target_stays_constant() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    confidence = rng.random((H, W)).astype(np.float32)
    out = BilateralGrid(img, BilateralParams()).solve(np.full((H, W), 0.7, np.float32), confidence)
    assert out.shape == (H, W) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.7, atol=1e-5)


def test_zero_lambda_full_confidence_returns_target() -> None:
    # σ_spatial = 1 gives every pixel its own vertex, so the data term alone pins every pixel.
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    target = rng.random((2, H, W)).astype(np.float32)
    params = BilateralParams(sigma_spatial=1.0, lam=1e-6, **FULL_RES)
    out = BilateralGrid(img, params).solve(target, np.ones((H, W), np.float32))
    np.testing.assert_allclose(out, target, atol=1e-4)


def test_default_lambda_does_smooth() -> None:
    # Counterpart of the test above: with the default λ the same noisy target must change.
    rng = np.random.default_rng(2)
    img = np.full((H, W, 3), 120, np.uint8)
    target = rng.random((H, W)).astype(np.float32)
    out = BilateralGrid(img, BilateralParams(**FULL_RES)).solve(target, np.ones((H, W), np.float32))
    assert out.std() < 0.2 * target.std()


# Working at 40 px instead of 64 costs about a pixel of edge precision on this 15 px disc.
@pytest.mark.parametrize(
    ("max_side", "min_iou", "colours"),
    [(None, 0.97, RED_BLUE), (40, 0.9, RED_BLUE), (None, 0.97, GREYS), (None, 0.97, ISOLUMINANT)],
)
def test_blurred_target_snaps_to_colour_edge(max_side: int | None, min_iou: float, colours: tuple) -> None:
    region = _disc()
    img = _two_colour(region, colours=colours)
    # A mask shifted by 4 px and blurred: the kind of coarse, misplaced boundary a network produces.
    target = _box_blur(np.roll(region, 4, axis=1), 4)
    confidence = np.abs(2.0 * target - 1.0)
    out = BilateralGrid(img, BilateralParams(max_side=max_side)).solve(target, confidence)
    before, after = _iou(target > 0.5, region), _iou(out > 0.5, region)
    assert after > before + 0.05
    assert after > min_iou


def test_zero_confidence_hole_takes_neighbour_values() -> None:
    rng = np.random.default_rng(3)
    img = np.clip(120 + rng.normal(0, 1.0, (H, W, 3)), 0, 255).astype(np.uint8)
    target = np.ones((H, W), np.float32)
    confidence = np.ones((H, W), np.float32)
    # Inside the hole the target says 0, but with zero confidence it must be ignored.
    target[12:36, 20:44] = 0.0
    confidence[12:36, 20:44] = 0.0
    out = BilateralGrid(img, BilateralParams(**FULL_RES)).solve(target, confidence)
    assert out[12:36, 20:44].min() > 0.98


def test_bistochastised_blur_is_normalised() -> None:
    grid = BilateralGrid(_two_colour(_disc(), noise=12.0), BilateralParams(**FULL_RES))
    s, b, n, m = grid.splat_matrix, grid.blur_matrix, grid.n, grid.m
    np.testing.assert_allclose(np.asarray(s.sum(axis=0)).ravel(), 1.0)  # every pixel splats once
    np.testing.assert_allclose(s @ np.ones(H * W), m)
    assert (b != b.T).nnz == 0
    np.testing.assert_allclose(b.diagonal(), 10.0)
    assert b.nnz > 2 * grid.n_vertices  # the noise must not leave the grid without neighbours
    np.testing.assert_allclose(n * (b @ n), m, rtol=1e-3)
    normalised = sp.diags(1.0 / m) @ sp.diags(n) @ b @ sp.diags(n)
    np.testing.assert_allclose(normalised @ np.ones(grid.n_vertices), 1.0, rtol=1e-3)


def test_pcg_converges_to_direct_solution() -> None:
    rng = np.random.default_rng(4)
    img = _two_colour(_disc(), noise=12.0)
    target = rng.random((H, W)).astype(np.float32)
    confidence = rng.random((H, W)).astype(np.float32)
    params = BilateralParams(lam=4.0, iterations=400, **FULL_RES)
    grid = BilateralGrid(img, params)
    s, b, n = grid.splat_matrix.astype(np.float64), grid.blur_matrix, grid.n
    c = confidence.ravel().astype(np.float64)
    smooth = sp.diags(n * (b @ n)) - sp.diags(n) @ b @ sp.diags(n)
    a = (params.lam * smooth + sp.diags(s @ c)).tocsc()
    # Vertices no confident pixel reaches would make A singular; the tiny ridge only picks a solution.
    y = spsolve(a + 1e-9 * sp.eye(a.shape[0]), s @ (c * target.ravel()))
    np.testing.assert_allclose(grid.solve(target, confidence).ravel(), s.T @ y, atol=2e-3)


def test_channels_are_solved_independently() -> None:
    rng = np.random.default_rng(5)
    img = _two_colour(_disc(), noise=6.0)
    targets = rng.random((2, H, W)).astype(np.float32)
    confidence = rng.random((2, H, W)).astype(np.float32)
    grid = BilateralGrid(img, BilateralParams(**FULL_RES))
    together = grid.solve(targets, confidence)
    for k in range(2):
        np.testing.assert_allclose(together[k], grid.solve(targets[k], confidence[k]), atol=1e-5)


def test_refine_probabilities_sums_to_one_and_follows_edges() -> None:
    region = _disc()
    obj = _box_blur(np.roll(region, 4, axis=1), 4)
    # A faint second object that never wins; per-channel confidences make the raw solutions not sum to 1.
    faint = np.zeros_like(obj)
    faint[:10, -10:] = 0.2
    probs = np.stack([1.0 - obj - faint, obj, faint])
    rng = np.random.default_rng(6)
    confidence = np.stack([np.abs(2.0 * obj - 1.0)] * 2 + [rng.random((H, W)).astype(np.float32)])
    out = refine_probabilities(_two_colour(region), probs, confidence, BilateralParams())
    assert out.shape == (3, H, W) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert out.min() >= 0.0
    labels = out.argmax(axis=0)
    assert not (labels == 2).any()
    assert _iou(labels == 1, region) > _iou(probs.argmax(axis=0) == 1, region) + 0.05


@pytest.mark.parametrize("objects", [1, 2])
def test_background_is_what_the_solved_objects_leave(monkeypatch, objects: int) -> None:
    """With one object and one confidence, only the object is solved and the background is 1 - x,
    what solving it too gives (conjugate gradient takes the same steps); several objects solve all."""
    region = _disc()
    obj = _box_blur(np.roll(region, 4, axis=1), 4)
    split = np.where(np.arange(W) < 28, 1.0, 0.0)[None] if objects == 2 else 1.0
    probs = np.stack([1.0 - obj] + ([obj * split, obj * (1 - split)] if objects == 2 else [obj])).astype(np.float32)
    confidence = top_two_margin(probs)
    img = _two_colour(region, noise=12.0)
    params = BilateralParams(iterations=8)  # CG stopped short of convergence: the equality is not the optimum's
    every = BilateralGrid(img, params).solve(probs, confidence)
    every = np.clip(every, 0.0, 1.0) / np.clip(every, 0.0, 1.0).sum(axis=0)
    solved = []
    solve = BilateralGrid.solve
    monkeypatch.setattr(
        BilateralGrid, "solve", lambda self, t, c, **kw: solved.append(len(t)) or solve(self, t, c, **kw)
    )
    out = refine_probabilities(img, probs, confidence, params)
    assert solved == [1 if objects == 1 else objects + 1]
    np.testing.assert_allclose(out, every, atol=1e-5)


def test_the_margin_of_one_object_and_a_confidence_resized_once_change_nothing() -> None:
    """Two shortcuts of the CPU refiners give the same numbers: the top-two margin of two channels as
    |p0 - p1|, and the band's confidence at the working resolution handed to the solver."""
    rng = np.random.default_rng(0)
    for channels in (2, 3):
        probs = rng.random((channels, 30, 50)).astype(np.float32)
        top = np.sort(probs, axis=0)
        np.testing.assert_array_equal(top_two_margin(probs), top[-1] - top[-2])
    region = _disc()
    obj = _box_blur(np.roll(region, 4, axis=1), 4)
    probs = np.stack([1.0 - obj, obj]).astype(np.float32)
    confidence = top_two_margin(probs)
    img = _two_colour(region, noise=12.0)
    params = BilateralParams(max_side=W // 2)
    grid = BilateralGrid(img, params)
    small = cv2.resize(confidence, grid.work_shape[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(
        grid.solve(probs[1:], confidence, work_confidence=small), grid.solve(probs[1:], confidence)
    )


def test_band_is_the_pixels_near_uncertain_ones() -> None:
    confidence = np.ones((40, 80), dtype=np.float32)
    confidence[20, 40] = 0.5  # one uncertain pixel
    pixels = band_pixels(confidence, (20, 40), band=8.0, level=0.98)  # working at half size: 4 px there
    assert pixels.shape == (20, 40) and pixels[10, 20]
    yy, xx = np.nonzero(pixels)
    assert np.hypot(yy - 10, xx - 20).max() <= 4.5 and pixels.sum() > 40  # a disc of radius ~4
    assert band_pixels(np.full((40, 80), 0.5, np.float32), (20, 40), 8.0, 0.98) is None  # all of them: no mask
    assert band_pixels(np.ones((40, 80), np.float32), (20, 40), 8.0, 0.98) is None  # none uncertain


def test_band_solves_the_boundary_and_keeps_the_rest() -> None:
    """The grid on the band only: the boundary snaps to the colour edge as with every pixel, and the
    confident pixels beyond the band keep their probabilities; the grid holds fewer pixels."""
    region = _disc()
    obj = _box_blur(np.roll(region, 3, axis=1), 3)
    probs = np.stack([1.0 - obj, obj]).astype(np.float32)
    confidence = top_two_margin(probs)
    img = _two_colour(region, noise=6.0)
    params = BilateralParams(**FULL_RES)
    whole = refine_probabilities(img, probs, confidence, params)
    banded = refine_probabilities(img, probs, confidence, params, band=4.0)
    near = band_pixels(confidence, (H, W), 4.0, 0.98)
    assert near is not None and 0.1 < near.mean() < 0.6
    assert BilateralGrid(img, params, near).pixel_vertex.size == near.sum()
    np.testing.assert_array_equal(banded[:, ~near], probs[:, ~near])
    assert _iou(banded.argmax(0) == 1, whole.argmax(0) == 1) > 0.98
    assert _iou(banded.argmax(0) == 1, region) > _iou(obj > 0.5, region) + 0.05
    with pytest.raises(VosError, match="working resolution"):
        BilateralGrid(img, params, near[:-1])


def test_refiner_band_on_the_window_changes_few_labels() -> None:
    region = _disc()
    obj = _box_blur(np.roll(region, 3, axis=1), 3)
    probs = np.stack([1.0 - obj, obj]).astype(np.float32)
    img = _two_colour(region, noise=6.0)
    whole = BilateralRefiner(crop=True)(img, probs)
    banded = BilateralRefiner(crop=True, band=6.0)(img, probs)
    assert (whole.argmax(0) != banded.argmax(0)).mean() < 0.01
    assert _iou(banded.argmax(0) == 1, region) > _iou(obj > 0.5, region) + 0.05


def test_session_refiner_takes_and_returns_tensors() -> None:
    torch = pytest.importorskip("torch")
    region = _disc()
    obj = _box_blur(np.roll(region, 4, axis=1), 4)
    probs = torch.from_numpy(np.stack([1.0 - obj, obj]))
    out = BilateralRefiner()(_two_colour(region), probs)
    assert isinstance(out, torch.Tensor) and out.shape == (2, H, W) and out.dtype == torch.float32
    assert _iou(out.argmax(0).numpy() == 1, region) > _iou(obj > 0.5, region) + 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma_spatial": 0.0},
        {"sigma_luma": -1.0},
        {"sigma_chroma": float("nan")},
        {"lam": -1.0},
        {"iterations": 0},
        {"max_side": 0},
        {"max_side": 100.5},
        {"iterations": 2.5},
        {"lam": "high"},
    ],
)
def test_bad_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(VosError):
        BilateralParams(**kwargs)


def test_mismatched_shapes_raise() -> None:
    img = _two_colour(_disc())
    grid = BilateralGrid(img, BilateralParams())
    ones = np.ones((H, W), np.float32)
    with pytest.raises(VosError):
        grid.solve(np.ones((H + 1, W), np.float32), ones)
    with pytest.raises(VosError):
        grid.solve(ones, np.ones((H, W + 1), np.float32))
    with pytest.raises(VosError):
        grid.solve(np.ones((2, H, W), np.float32), np.ones((3, H, W), np.float32))
    with pytest.raises(VosError):
        grid.solve(ones, np.ones((1, H, W), np.float32))
    with pytest.raises(VosError):
        grid.solve(np.ones((0, H, W), np.float32), ones)
    with pytest.raises(VosError):
        BilateralGrid(img[..., :2], BilateralParams())
    with pytest.raises(VosError):
        BilateralGrid(img[:0], BilateralParams())
    with pytest.raises(VosError):
        BilateralGrid(img.astype(np.float32), BilateralParams())
    with pytest.raises(VosError):
        refine_probabilities(img, np.ones((2, H, W + 2), np.float32), ones, BilateralParams())
    with pytest.raises(VosError):
        refine_probabilities(img, np.ones((H, W), np.float32), ones, BilateralParams())


def test_top_two_margin_is_the_gap_between_the_two_largest_channels():
    rng = np.random.default_rng(0)
    for channels in (2, 3, 6):
        probs = rng.random((channels, 9, 11)).astype(np.float32)
        ordered = np.sort(probs, axis=0)
        np.testing.assert_allclose(top_two_margin(probs), ordered[-1] - ordered[-2])
    tied = np.full((3, 2, 2), 0.25, np.float32)
    assert not top_two_margin(tied).any()
