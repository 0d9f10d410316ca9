"""The fast bilateral solver (Barron & Poole, ECCV 2016) for edge-aware refinement of soft masks.

Given a reference frame and per-pixel targets ``t`` with confidences ``c``, the solver finds the
smoothest (in bilateral space) output that stays close to the confident targets:

    minimise  λ/2 Σ_ij Ŵ_ij (x_i - x_j)²  +  Σ_i c_i (x_i - t_i)²

where Ŵ is a bistochastised bilateral affinity. It is solved on a sparse 5-D grid over
(x/σ_spatial, y/σ_spatial, Y/σ_luma, U/σ_chroma, V/σ_chroma) of the reference in YUV, with the
operators of the reference implementation: splat ``S`` (pixels -> vertices), blur ``B`` ([1 2 1]
along each of the 5 grid dimensions, neighbours found by hashing integer grid coordinates) and slice
``S^T``. The bilateral-space system

    A = λ (D_m - D_n B D_n) + diag(S c),   b = S (c · t)

is solved with a vectorised Jacobi-preconditioned conjugate gradient, one row per channel, on the
vertices that have grid neighbours (the others are solved exactly by the initial guess). With the
same integer grid coordinates the result matches the reference implementation to ~2e-6; the one
deliberate difference is that YUV comes from OpenCV's YCrCb, rounded to integers before binning.

Speed: the grid is built on a copy of the reference whose longer side is at most
``BilateralParams.max_side`` pixels (σ_spatial stays in full-resolution pixels, so the grid keeps its
extent), and the result is upsampled bilinearly. The cost: boundaries are only as precise as the
working resolution (one working pixel is 3.3 full-resolution pixels at 854x480 with the default 256,
though the upsampled soft values put the 0.5 crossing between pixels), and structures thinner than
a working pixel wash out. Build + solve of 2 channels on one core at 854x480: about 21 ms with 256,
36 ms with 320, 150-250 ms with ``max_side=None`` (see benchmarks/bench_bilateral.py).

The parameters, the constants of the system and the input checks are shared with
:mod:`engine.bilateral_torch` and live in :mod:`engine.bilateral_params`.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp

from engine.bilateral_params import (
    _BISTOCHASTIC_ITERS,
    _CG_TOL,
    _EPS,
    _GRID_DIMS,
    UNCERTAIN_LEVEL,
    BilateralParams,
    _working_size,
    check_probabilities,
    check_reference,
    check_solve_shapes,
)
from engine.errors import VosError

__all__ = ["BilateralGrid", "BilateralParams", "band_pixels", "refine_probabilities"]


def _resize(stack: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize a (K, H, W) stack to (K, h, w) float32."""
    h, w = size
    if stack.shape[1:] == (h, w):
        return stack.astype(np.float32)
    # Channel by channel into one buffer: cheaper than cv2's interleaved layout plus two transposes.
    out = np.empty((stack.shape[0], h, w), dtype=np.float32)
    for i, channel in enumerate(stack):
        cv2.resize(channel.astype(np.float32, copy=False), (w, h), dst=out[i], interpolation=interpolation)
    return out


def _argsort_keys(keys: np.ndarray, key_range: int) -> np.ndarray:
    """Stable argsort of non-negative int64 ``keys`` < ``key_range``, as LSD radix passes of 16 bits.

    numpy radix-sorts 16-bit integers, so two or three such passes are ~3x faster than a
    comparison argsort of the int64 keys (typical keys need 25-35 bits).
    """
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while key_range >> shift:
        digit = ((keys[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


class BilateralGrid:
    """Splat / blur / slice operators and bistochastisation for one reference frame.

    Built once per frame; :meth:`solve` can then be called for any number of targets.

    Attributes:
        splat_matrix: (V, P) csc matrix S, one 1 per pixel column (P pixels at working resolution).
        blur_matrix: (V, V) csr matrix B, the [1 2 1] blur along each grid dimension (diagonal 2·5).
        m: (V,) pixel counts per vertex, S 1.
        n: (V,) bistochastisation scales, n · (B n) ≈ m.
    """

    def __init__(self, reference: np.ndarray, params: BilateralParams, pixels: np.ndarray | None = None) -> None:
        """Build the grid of a (H, W, 3) uint8 RGB reference frame on all its pixels, or on those of
        ``pixels``, an (h, w) bool mask at the working resolution (:func:`band_pixels`): :meth:`solve`
        then gives the others their targets."""
        if not isinstance(reference, np.ndarray):
            shape = getattr(reference, "shape", None)
            raise VosError(f"The bilateral solver reference must be an (H, W, 3) RGB image, got shape {shape}.")
        check_reference(reference.shape, reference.dtype == np.uint8, reference.dtype)
        self.params = params
        self.shape: tuple[int, int] = (reference.shape[0], reference.shape[1])
        self.work_shape = _working_size(*self.shape, params.max_side)
        h, w = self.work_shape
        small = reference
        if self.work_shape != self.shape:
            # INTER_AREA averages colours so that the grid sees what the upsampled result will cover.
            small = cv2.resize(reference, (w, h), interpolation=cv2.INTER_AREA)
        # σ_spatial is in full-resolution pixels: scale it so the grid keeps the same spatial extent.
        sigma_s = params.sigma_spatial * w / self.shape[1]

        # OpenCV's YCrCb is the reference's JPEG (BT.601 full-range) YUV with U, V offset by 128,
        # rounded to integers, at a tenth of the cost of a float matrix product.
        ycrcb = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2YCrCb).reshape(-1, 3)
        x_cell = np.tile((np.arange(w) / sigma_s).astype(np.int64), h)
        y_cell = np.repeat((np.arange(h) / sigma_s).astype(np.int64), w)
        self.pixels: np.ndarray | None = None  # flat indices of the grid's pixels (None: all)
        if pixels is not None:
            if pixels.shape != (h, w):
                raise VosError(f"The solver's pixel mask must be {(h, w)}, the working resolution; got {pixels.shape}.")
            self.pixels = np.flatnonzero(pixels)
            ycrcb, x_cell, y_cell = ycrcb[self.pixels], x_cell[self.pixels], y_cell[self.pixels]
        # Least significant first: vertices sharing a spatial cell end up next to each other in the
        # sorted key order, which keeps the blur's neighbour look-ups and sparse products cache-local.
        coords = [
            (ycrcb[:, 1] / params.sigma_chroma).astype(np.int64),
            (ycrcb[:, 2] / params.sigma_chroma).astype(np.int64),
            (ycrcb[:, 0] / params.sigma_luma).astype(np.int64),
            x_cell,
            y_cell,
        ]
        # Mixed-radix int64 key with one spare level on each side of every dimension, so that a
        # ±1 neighbour is exactly ±stride in key space and never wraps into another coordinate.
        npix = x_cell.size
        keys = np.zeros(npix, dtype=np.int64)
        strides = np.empty(_GRID_DIMS, dtype=np.int64)
        stride = 1
        for d, c in enumerate(coords):
            c -= c.min()
            extent = int(c.max()) + 3
            if stride > np.iinfo(np.int64).max // extent:
                raise VosError("The bilateral grid is too fine to index; use larger sigmas or a smaller max_side.")
            strides[d] = stride
            keys += (c + 1) * stride
            stride *= extent

        # One sort does the hashing: the distinct keys are the vertices, their rank the splat index.
        order = _argsort_keys(keys, stride)
        sorted_keys = keys[order]
        first = np.empty(sorted_keys.size, dtype=bool)
        first[0] = True
        np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
        vertex_keys = sorted_keys[first]
        # int32 indices: scipy's sparse kernels and the gathers run faster on them.
        self.pixel_vertex = np.empty(npix, dtype=np.int32)
        self.pixel_vertex[order] = np.cumsum(first, dtype=np.int32) - 1
        nv = vertex_keys.size
        self.n_vertices = nv
        # Exactly one 1 per pixel column, so the csc arrays are known without a COO sort.
        self.splat_matrix = sp.csc_matrix(
            (np.ones(npix, dtype=np.float32), self.pixel_vertex, np.arange(npix + 1, dtype=np.int32)), shape=(nv, npix)
        )

        # Row i of B: slot 0 is i itself (weight 2 per dimension), slots 2d+1 / 2d+2 its +1 / -1
        # neighbours along dimension d (weight 1), -1 where that vertex does not exist.
        cols = np.full((nv, 2 * _GRID_DIMS + 1), -1, dtype=np.int32)
        cols[:, 0] = np.arange(nv, dtype=np.int32)
        counts = np.ones(nv, dtype=np.int32)
        for d in range(_GRID_DIMS):
            if strides[d] == 1:
                # Along the least significant dimension the +1 neighbour, if any, is the next key.
                has = np.flatnonzero(vertex_keys[1:] == vertex_keys[:-1] + 1)
                above = has + 1
            else:
                # Shifted sorted keys are still sorted, which makes searchsorted several times faster;
                # only the + direction is searched, the - direction is the same pairs read backwards.
                wanted = vertex_keys + strides[d]
                found = np.minimum(np.searchsorted(vertex_keys, wanted), nv - 1)
                has = np.flatnonzero(vertex_keys[found] == wanted)
                above = found[has]
            cols[has, 2 * d + 1] = above
            cols[above, 2 * d + 2] = has
            # Each vertex has at most one + and one - neighbour per dimension: no repeated indices.
            counts[has] += 1
            counts[above] += 1
        # Built straight from row-major (row, slot) order: no COO conversion or duplicate summing needed.
        indptr = np.zeros(nv + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        indices = cols[cols >= 0]
        weights = np.ones(indices.size)
        weights[indptr[:-1]] = 2.0 * _GRID_DIMS  # the vertex itself is slot 0 of every row
        self.blur_matrix = sp.csr_matrix((weights, indices, indptr), shape=(nv, nv))

        self.m = np.bincount(self.pixel_vertex, minlength=nv).astype(np.float64)
        n = np.ones(nv)
        for _ in range(_BISTOCHASTIC_ITERS):
            n = np.sqrt(n * self.m / (self.blur_matrix @ n))
        self.n = n
        # As in the reference, use m̂ = n · (B n) in the system rather than m, so that
        # (D_m̂ - D_n B D_n) 1 = 0 exactly and constants are preserved however far n has converged.
        m_hat = n * (self.blur_matrix @ n)
        data = -params.lam * np.repeat(n, counts) * self.blur_matrix.data * n[indices]
        data[indptr[:-1]] += params.lam * m_hat
        # A vertex without grid neighbours has an all-zero smoothness row (m̂ = 2·5·n² there), so its
        # equation is c x = c t, solved exactly by the initial guess. A quarter to a third of the vertices
        # at 480p are like that; the PCG only runs on the others (which only link among themselves).
        linked = counts > 1
        self._linked = np.flatnonzero(linked)
        renumber = np.cumsum(linked, dtype=np.int32) - 1
        keep = np.repeat(linked, counts)
        linked_indptr = np.zeros(self._linked.size + 1, dtype=np.int32)
        np.cumsum(counts[linked], out=linked_indptr[1:])
        # Smoothness part λ (D_m̂ - D_n B D_n) in float32 (half the memory traffic of the PCG); the
        # data part diag(S c) differs per channel, so it is applied element-wise in the PCG instead.
        self._smooth = sp.csr_matrix(
            (data[keep].astype(np.float32), renumber[indices[keep]], linked_indptr),
            shape=(self._linked.size, self._linked.size),
        )
        self._smooth_diag = data[indptr[:-1]][linked].astype(np.float32)

    def splat(self, values: np.ndarray) -> np.ndarray:
        """Sum (P,) or (K, P) pixel values into (V,) or (K, V) vertices: S x."""
        if values.ndim == 1:
            return self.splat_matrix @ values
        return np.stack([self.splat_matrix @ row for row in values])

    def slice(self, values: np.ndarray) -> np.ndarray:
        """Read (V,) or (K, V) vertex values back at the (P,) pixels: S^T y, which is a gather."""
        # np.take keeps (K, P) C-contiguous; fancy indexing on the last axis would return F order.
        return np.take(values, self.pixel_vertex, axis=-1)

    def solve(
        self, targets: np.ndarray, confidence: np.ndarray, work_confidence: np.ndarray | None = None
    ) -> np.ndarray:
        """Solve the bilateral problem for each channel.

        Args:
            targets: (K, H, W) or (H, W) values in [0, 1].
            confidence: (H, W), shared by every channel, or (K, H, W), in [0, 1]; values outside are
                clipped, since a negative confidence would make the system indefinite.
            work_confidence: the (H, W) ``confidence`` already resized to the working resolution as
                this does (INTER_AREA), where the caller has it; None: resized here.

        Returns:
            float32 array with the shape of ``targets``.
        """
        targets = np.asarray(targets)
        confidence = np.asarray(confidence)
        check_solve_shapes(self.shape, targets.shape, confidence.shape)
        single = targets.ndim == 2
        stack = targets[None] if single else targets
        k = stack.shape[0]
        conf = confidence[None] if confidence.ndim == 2 else confidence

        size = self.work_shape
        t = _resize(stack, size, cv2.INTER_AREA).reshape(k, -1)
        if work_confidence is not None and confidence.ndim == 2 and work_confidence.shape == size:
            c = np.clip(work_confidence.reshape(1, -1), 0.0, 1.0)
        else:
            c = np.clip(_resize(conf, size, cv2.INTER_AREA).reshape(conf.shape[0], -1), 0.0, 1.0)
        every = t  # the targets of every pixel, the grid's or not
        if self.pixels is not None:
            t, c = t[:, self.pixels], c[:, self.pixels]
        c_splat = self.splat(c)  # (1, V) or (K, V)
        b = self.splat(t * c)  # (K, V)
        y = b / np.maximum(c_splat, _EPS)
        if self._linked.size:
            sub = self._linked
            take = [np.take(a, sub, axis=1) for a in (b, c_splat, y)]
            y[:, sub] = self._pcg(*take)
        if self.pixels is None:
            out = self.slice(y)
        else:  # the targets were resized into an array of their own: filled in place
            out = every
            out[:, self.pixels] = self.slice(y)
        out = _resize(out.reshape(k, *size), self.shape, cv2.INTER_LINEAR)
        return out[0] if single else out

    def _apply(self, v: np.ndarray, c_splat: np.ndarray, out: np.ndarray) -> None:
        """out = A v for (K, V') channels over the linked vertices, A_k = λ (D_m̂ - D_n B D_n) + diag(c_k)."""
        for i in range(v.shape[0]):
            out[i] = self._smooth @ v[i]
        out += c_splat * v

    def _pcg(self, b: np.ndarray, c_splat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Jacobi-preconditioned CG on (K, V') float32 channels (linked vertices), each with its own steps.

        Runs ``params.iterations`` iterations at most, fewer once every channel's preconditioned
        residual has dropped by ``_CG_TOL``.
        """
        inv_diag = 1.0 / np.maximum(self._smooth_diag + c_splat, _EPS)
        x = x.astype(np.float32)
        ap = np.empty_like(x)
        tmp = np.empty_like(x)
        self._apply(x, c_splat, ap)
        r = b - ap
        z = r * inv_diag
        p = z.copy()
        rz = np.einsum("kv,kv->k", r, z).astype(np.float64)
        stop = (_CG_TOL**2) * np.einsum("kv,kv->k", b, b * inv_diag).astype(np.float64)
        for _ in range(self.params.iterations):
            if np.all(rz <= stop):
                break
            self._apply(p, c_splat, ap)
            pap = np.einsum("kv,kv->k", p, ap).astype(np.float64)
            # Converged or degenerate channels (pAp = 0) keep their value instead of dividing by zero.
            alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0).astype(np.float32)[:, None]
            x += np.multiply(p, alpha, out=tmp)
            r -= np.multiply(ap, alpha, out=tmp)
            np.multiply(r, inv_diag, out=z)
            rz_new = np.einsum("kv,kv->k", r, z).astype(np.float64)
            beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0).astype(np.float32)[:, None]
            p *= beta
            p += z
            rz = rz_new
        return x


def band_pixels(confidence: np.ndarray, work_shape: tuple[int, int], band: float, level: float) -> np.ndarray | None:
    """The pixels the solver needs: those within ``band`` pixels (of ``confidence``'s resolution) of
    one whose confidence is below ``level``, as an (h, w) bool mask at the working resolution
    ``work_shape``; None where that is nearly every pixel.

    The others are confident and far from any boundary: their solution is their target, and without
    them the grid's build and solve shrink with the band, not the window (at 16 pixels about 40% of
    the refiners' window on the training sequences: the solver 24 -> 13 ms a frame on train, one
    core; README, twenty-seventh round).
    """
    small = _resize(confidence[None], work_shape, cv2.INTER_AREA)[0]
    return _band_of(small, band * work_shape[1] / confidence.shape[1], level)


def _band_of(small: np.ndarray, band: float, level: float) -> np.ndarray | None:
    """:func:`band_pixels` of a confidence already at the working resolution, ``band`` in its pixels."""
    sure = (small >= level).astype(np.uint8)  # distanceTransform: the distance to the nearest 0
    distance = cv2.distanceTransform(sure, cv2.DIST_L2, 3)
    pixels = distance <= band
    return None if not pixels.any() or pixels.mean() > 0.9 else pixels


def refine_probabilities(
    reference: np.ndarray,
    probs: np.ndarray,
    confidence: np.ndarray,
    params: BilateralParams,
    *,
    band: float = 0.0,
    level: float = UNCERTAIN_LEVEL,
) -> np.ndarray:
    """Refine soft segmentation probabilities so that their boundaries follow the reference's edges.

    Every channel is solved on one shared grid, clipped to [0, 1] and renormalised to sum to 1 per
    pixel, so that argmax over channels gives the labels. With one object and one confidence for
    both channels the background is not solved but taken as 1 - x: the system is linear with the
    constants among its solutions, and conjugate gradient started from 1 - x_0 on the residual's
    negative takes the same steps, so solving it gives the same up to float rounding (half the
    conjugate gradient's work; the solver ~18% faster at 480p). With several objects, truncated CG
    on their sum is not the sum of their runs, so every channel is solved.

    Args:
        reference: (H, W, 3) uint8 RGB frame.
        probs: (K+1, H, W) probabilities, background first then one channel per object.
        confidence: (H, W) or (K+1, H, W) in [0, 1].
        params: solver parameters.
        band: above 0, only the pixels within this many pixels of one whose confidence is below
            ``level`` are solved (:func:`band_pixels`); the others keep their probabilities.

    Returns:
        (K+1, H, W) float32 probabilities.
    """
    probs = np.asarray(probs)
    check_probabilities(probs.shape, getattr(reference, "shape", None))
    pixels, small = None, None
    if band > 0:
        work = _working_size(*probs.shape[1:], params.max_side)
        shared = np.asarray(confidence if np.ndim(confidence) == 2 else np.min(confidence, axis=0))
        small = _resize(shared[None], work, cv2.INTER_AREA)[0]
        pixels = _band_of(small, band * work[1] / shared.shape[1], level)
        if np.ndim(confidence) != 2:
            small = None  # the solver takes each channel's own
    grid = BilateralGrid(reference, params, pixels)
    if probs.shape[0] == 2 and np.ndim(confidence) == 2:
        refined = np.empty(probs.shape, dtype=np.float32)
        refined[1:] = grid.solve(probs[1:], confidence, work_confidence=small)
        np.subtract(1.0, refined[1], out=refined[0])
    else:
        refined = grid.solve(probs, confidence, work_confidence=small)
    np.clip(refined, 0.0, 1.0, out=refined)
    total = refined.sum(axis=0, keepdims=True)
    # A pixel where every channel was clipped to 0 falls back to background rather than NaN.
    empty = total[0] <= 1e-6
    refined[0][empty] = 1.0
    total[0][empty] = 1.0
    refined /= total
    return refined
