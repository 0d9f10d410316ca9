"""The fast bilateral solver of :mod:`engine.bilateral` in torch ops, on the device of its inputs.

The same system as the numpy/scipy solver, step for step: the working-resolution copy of the
reference (OpenCV's INTER_AREA weights, rounded as OpenCV rounds), OpenCV's integer RGB -> YCrCb,
the same integer grid coordinates, the same vertices (``torch.unique`` does the hashing, its inverse
is the splat index), the [1 2 1] blur along each of the 5 grid dimensions with neighbours found by
``torch.searchsorted`` in the sorted vertex keys, the same bistochastisation, data term and
Jacobi-preconditioned CG (vectorised over channels, on the vertices that have grid neighbours),
then slice, bilinear upsampling, clipping and renormalisation. Splat is ``index_add_``, slice and
blur are gathers, so the whole refinement stays on a GPU when the probabilities are there.

The CG loop has no host synchronisation on an accelerator: it always runs ``params.iterations``
iterations, and once every channel has converged (the numpy solver's early exit) the step sizes
are zero on the device, so the result is the one the early exit gives. On the CPU, where a check
costs nothing, the loop stops at that point instead. The grid build does synchronise (the number
of vertices and of linked vertices decides tensor sizes).

Against the numpy solver the refined probabilities differ by float32 rounding only, amplified where
the CG has not converged; see tests/test_bilateral_torch.py for the bound.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.bilateral_params import (
    _BISTOCHASTIC_ITERS,
    _CG_TOL,
    _EPS,
    _GRID_DIMS,
    BilateralParams,
    _working_size,
    check_probabilities,
    check_reference,
    check_solve_shapes,
)
from engine.errors import VosError

__all__ = ["TorchBilateralGrid", "TorchBilateralRefiner", "refine_probabilities", "top_two_margin"]

# OpenCV's fixed-point RGB -> YCrCb (BT.601 full range, 14 fractional bits): bit-exact with cv2.cvtColor.
_YUV_SHIFT = 14
_R2Y, _G2Y, _B2Y, _YCR, _YCB = 4899, 9617, 1868, 11682, 9241


def _build_dtype(device: torch.device) -> torch.dtype:
    """float64 for the bistochastisation, as the numpy solver, where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


@functools.lru_cache(maxsize=32)
def _area_taps_host(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA weights from ``src`` to ``dst <= src`` samples as (dst, T) indices and weights.

    The same cells as cv2's computeResizeAreaTab, including its 1e-3 threshold on partial pixels;
    unused taps have weight 0.
    """
    scale = 1.0 / (dst / src)  # as cv2 derives it from the inverse scale
    rows: list[list[tuple[int, float]]] = []
    for dx in range(dst):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, src - 1)
        sx1 = min(sx1, sx2)
        cell = min(scale, src - fsx1)
        taps = []
        if sx1 - fsx1 > 1e-3:
            taps.append((sx1 - 1, (sx1 - fsx1) / cell))
        taps.extend((sx, 1.0 / cell) for sx in range(sx1, sx2))
        if fsx2 - sx2 > 1e-3:
            taps.append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    index = np.zeros((dst, width), dtype=np.int64)
    weight = np.zeros((dst, width), dtype=np.float32)
    for i, taps in enumerate(rows):
        for j, (sx, wt) in enumerate(taps):
            index[i, j], weight[i, j] = sx, wt
    return index, weight


@functools.lru_cache(maxsize=64)
def _area_taps(src: int, dst: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    index, weight = _area_taps_host(src, dst)
    return torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device)


def _resize_area(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) float32 -> (K, h, w) by cv2's INTER_AREA (h <= H, w <= W)."""
    h, w = size
    if tuple(stack.shape[1:]) == (h, w):
        return stack
    k, height, width = stack.shape
    ix, wx = _area_taps(width, w, stack.device)
    iy, wy = _area_taps(height, h, stack.device)
    # cv2's float32 arithmetic in cv2's order (columns, then rows, taps in source order), so that
    # the rounded uint8 reference matches it also where the exact average is a tie at .5.
    # gather / index_select rather than advanced indexing: many times faster on a CPU. Taps are
    # gathered tap-major, (T, w), so that each tap's slice is contiguous.
    taps = torch.gather(stack, 2, ix.T.flatten().expand(k, height, -1)).view(k, height, -1, w)
    wx = wx.T
    rows = taps[:, :, 0] * wx[0]
    for t in range(1, taps.shape[2]):
        rows = rows + taps[:, :, t] * wx[t]  # (K, H, w)
    taps = rows.index_select(1, iy.flatten()).view(k, h, -1, w)
    out = wy[:, 0, None] * taps[:, :, 0]
    for t in range(1, taps.shape[2]):
        out = out + wy[:, t, None] * taps[:, :, t]
    return out  # (K, h, w)


def _small_reference(reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) int32 RGB at the working resolution, as cv2.resize(INTER_AREA) gives it."""
    rgb = reference.permute(2, 0, 1)
    if tuple(rgb.shape[1:]) == size:
        return rgb.to(torch.int32)
    small = _resize_area(rgb.to(torch.float32), size)
    # cv2 rounds half to even, except in its 2x2 fast path, which rounds half up.
    if rgb.shape[1] == 2 * size[0] and rgb.shape[2] == 2 * size[1]:
        small = torch.floor(small + 0.5)
    else:
        small = torch.round(small)
    return small.clamp_(0, 255).to(torch.int32)


def _ycrcb(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) int32 RGB -> (3, ...) int32 Y, Cr, Cb in [0, 255], bit-exact with cv2.COLOR_RGB2YCrCb."""
    r, g, b = rgb.unbind(0)
    half = 1 << (_YUV_SHIFT - 1)
    y = (r * _R2Y + g * _G2Y + b * _B2Y + half) >> _YUV_SHIFT
    delta = (128 << _YUV_SHIFT) + half
    cr = ((r - y) * _YCR + delta) >> _YUV_SHIFT
    cb = ((b - y) * _YCB + delta) >> _YUV_SHIFT
    return torch.stack([y, cr.clamp(0, 255), cb.clamp(0, 255)])


def _cells(count: int, sigma: float) -> np.ndarray:
    """Grid cells of 0 .. count-1 divided by ``sigma``, truncated in float64 exactly as the numpy solver does."""
    return (np.arange(count) / sigma).astype(np.int64)


def _as_reference(reference, device: torch.device | None) -> torch.Tensor:
    """Check a (H, W, 3) uint8 numpy array or tensor and return it as a tensor on ``device``."""
    if isinstance(reference, np.ndarray):
        check_reference(reference.shape, reference.dtype == np.uint8, reference.dtype)
        tensor = torch.from_numpy(np.ascontiguousarray(reference))
    elif isinstance(reference, torch.Tensor):
        check_reference(tuple(reference.shape), reference.dtype == torch.uint8, reference.dtype)
        tensor = reference
    else:
        shape = getattr(reference, "shape", None)
        raise VosError(f"The bilateral solver reference must be an (H, W, 3) RGB image, got shape {shape}.")
    return tensor.to(device) if device is not None else tensor


class TorchBilateralGrid:
    """:class:`engine.bilateral.BilateralGrid` in torch, on ``device`` (default: the reference's).

    Attributes:
        pixel_vertex: (P,) int64 vertex of each pixel at working resolution (splat / slice index).
        neighbours: (10, V) int64 +1 / -1 neighbour along each grid dimension, V where there is none.
        m: (V,) pixel counts per vertex; n: (V,) bistochastisation scales, n · (B n) ≈ m.
    """

    def __init__(self, reference, params: BilateralParams, device: torch.device | str | None = None) -> None:
        """Build the grid of a (H, W, 3) uint8 RGB reference frame (numpy array or tensor)."""
        ref = _as_reference(reference, None if device is None else torch.device(device))
        self.device = ref.device
        self.params = params
        # Stop the PCG with a host check once it has converged: free on the CPU, a synchronisation elsewhere.
        self.early_exit = self.device.type == "cpu"
        self.shape: tuple[int, int] = (ref.shape[0], ref.shape[1])
        self.work_shape = _working_size(*self.shape, params.max_side)
        h, w = self.work_shape
        sigma_s = params.sigma_spatial * w / self.shape[1]
        ycrcb = _ycrcb(_small_reference(ref, self.work_shape)).reshape(3, -1)

        # Coordinates as the numpy solver's (float64 division, truncation), read from host-computed
        # tables so that MPS (no float64) gets them too. Its per-dimension minimum is replaced by the
        # table's: a shift of every key along a dimension changes neither the vertices nor their order.
        luts = [_cells(256, params.sigma_chroma), _cells(256, params.sigma_chroma), _cells(256, params.sigma_luma)]
        x_cell, y_cell = _cells(w, sigma_s), _cells(h, sigma_s)
        extents = [int(lut[-1]) + 3 for lut in luts] + [int(x_cell[-1]) + 3, int(y_cell[-1]) + 3]
        to_dev = functools.partial(torch.as_tensor, device=self.device)
        coords = [to_dev(lut).index_select(0, ycrcb[i]) for lut, i in zip(luts, (1, 2, 0), strict=True)]
        coords += [to_dev(x_cell).repeat(h), to_dev(y_cell).repeat_interleave(w)]
        keys = torch.zeros(h * w, dtype=torch.int64, device=self.device)
        strides = []
        stride = 1
        for c, extent in zip(coords, extents, strict=True):
            if stride > np.iinfo(np.int64).max // extent:
                raise VosError("The bilateral grid is too fine to index; use larger sigmas or a smaller max_side.")
            strides.append(stride)
            keys += (c + 1) * stride
            stride *= extent

        vertex_keys, self.pixel_vertex, counts = torch.unique(
            keys, sorted=True, return_inverse=True, return_counts=True
        )
        nv = vertex_keys.numel()
        self.n_vertices = nv
        # Row 2d / 2d+1: the +1 / -1 neighbour along dimension d; nv (a zero pad slot) where absent.
        # Column nv is scratch, for the scatter below. As in the numpy solver, only the + direction
        # is searched (along the least significant dimension it is the next key); the - direction
        # is the same pairs read backwards.
        index = torch.arange(nv, device=self.device)
        neighbours = torch.full((2 * _GRID_DIMS, nv + 1), nv, dtype=torch.int64, device=self.device)
        for d, step in enumerate(strides):
            wanted = vertex_keys + step
            found = index + 1 if step == 1 else torch.searchsorted(vertex_keys, wanted)
            found = found.clamp_(max=nv - 1)
            above = torch.where(vertex_keys[found] == wanted, found, nv)
            neighbours[2 * d, :nv] = above
            neighbours[2 * d + 1].scatter_(0, above, index)
        self.neighbours = neighbours[:, :nv].contiguous()
        has = self.neighbours < nv

        ftype = _build_dtype(self.device)
        self.m = counts.to(ftype)
        n = torch.ones(nv, dtype=ftype, device=self.device)
        for _ in range(_BISTOCHASTIC_ITERS):
            n = torch.sqrt(n * self.m / self._blur(n))
        self.n = n
        lam = params.lam
        # λ (D_m̂ - D_n B D_n) with m̂ = n · (B n), in the numpy solver's order of operations.
        m_hat = n * self._blur(n)
        diag = -lam * n * (2.0 * _GRID_DIMS) * n + lam * m_hat
        linked = has.any(dim=0)
        self._linked = torch.nonzero(linked).squeeze(1)
        nl = self._linked.numel()
        renumber = torch.full((nv + 1,), nl, dtype=torch.int64, device=self.device)
        renumber[self._linked] = torch.arange(nl, device=self.device)
        sub = self.neighbours.index_select(1, self._linked)
        self._nbr = renumber.index_select(0, sub.flatten())  # (10 · V',) flat neighbour table, nl where absent
        self._flat_nbr: dict[int, torch.Tensor] = {}  # per channel count, see _apply
        # Off-diagonal -λ n_i n_j (0 at absent slots), the numpy solver's float64 products cast to float32.
        n_j = F.pad(n, (0, 1)).index_select(0, sub.flatten()).view(sub.shape)
        self._weights = (-lam * n[self._linked] * n_j).to(torch.float32)
        self._smooth_diag = diag[self._linked].to(torch.float32)

    def _blur(self, v: torch.Tensor) -> torch.Tensor:
        """B v for (V,) v: 2·5 v plus the sum of the existing neighbours."""
        gathered = F.pad(v, (0, 1)).index_select(0, self.neighbours.flatten()).view(self.neighbours.shape)
        return (2.0 * _GRID_DIMS) * v + gathered.sum(dim=0)

    def splat(self, values: torch.Tensor) -> torch.Tensor:
        """Sum (K, P) pixel values into (K, V) vertices: S x."""
        out = torch.zeros(values.shape[0], self.n_vertices, dtype=values.dtype, device=values.device)
        return out.index_add_(1, self.pixel_vertex, values)

    def slice(self, values: torch.Tensor) -> torch.Tensor:
        """Read (K, V) vertex values back at the (K, P) pixels: S^T y."""
        return values.index_select(1, self.pixel_vertex)

    def solve(self, targets, confidence) -> torch.Tensor:
        """Solve the bilateral problem for each channel, as :meth:`engine.bilateral.BilateralGrid.solve`.

        ``targets`` (K, H, W) or (H, W) and ``confidence`` (H, W) or (K, H, W) are tensors or arrays,
        moved to the grid's device; returns float32 with the shape of ``targets``, on that device.
        """
        targets = torch.as_tensor(targets, device=self.device)
        confidence = torch.as_tensor(confidence, device=self.device)
        check_solve_shapes(self.shape, tuple(targets.shape), tuple(confidence.shape))
        single = targets.ndim == 2
        stack = (targets[None] if single else targets).to(torch.float32)
        conf = (confidence[None] if confidence.ndim == 2 else confidence).to(torch.float32)
        k = stack.shape[0]

        size = self.work_shape
        t = _resize_area(stack, size).reshape(k, -1)
        c = _resize_area(conf, size).reshape(conf.shape[0], -1).clamp(0.0, 1.0)
        c_splat = self.splat(c)
        b = self.splat(t * c)
        y = b / c_splat.clamp_min(_EPS)
        if self._linked.numel():
            sub = self._linked
            y[:, sub] = self._pcg(b[:, sub], c_splat[:, sub], y[:, sub])
        out = self.slice(y).reshape(k, *size)
        if size != self.shape:
            out = F.interpolate(out[None], size=self.shape, mode="bilinear", align_corners=False)[0]
        return out[0] if single else out

    def _apply(self, v: torch.Tensor, c_splat: torch.Tensor) -> torch.Tensor:
        """A v for (K, V') channels over the linked vertices, A_k = λ (D_m̂ - D_n B D_n) + diag(c_k)."""
        k = v.shape[0]
        if k not in self._flat_nbr:
            # Channel k's neighbours at k (V' + 1) in the flattened padded (K, V' + 1) values: one 1-D
            # index_select, several times faster on a CPU than one along dimension 1.
            offsets = torch.arange(k, device=v.device)[:, None] * (v.shape[1] + 1)
            self._flat_nbr[k] = (self._nbr + offsets).flatten()
        neighbours = F.pad(v, (0, 1)).flatten().index_select(0, self._flat_nbr[k]).view(k, *self._weights.shape)
        return (self._smooth_diag + c_splat) * v + (neighbours * self._weights).sum(dim=1)

    def _pcg(self, b: torch.Tensor, c_splat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Jacobi-preconditioned CG on (K, V') float32 channels, each with its own steps.

        ``params.iterations`` iterations at most; once every channel's preconditioned residual has
        dropped by ``_CG_TOL`` the steps are zero (a device-side flag, no host synchronisation);
        on the CPU the loop also stops there.
        """
        check = self.early_exit
        inv_diag = 1.0 / (self._smooth_diag + c_splat).clamp_min(_EPS)
        x = x.clone()
        r = b - self._apply(x, c_splat)
        z = r * inv_diag
        p = z.clone()
        rz = (r * z).sum(dim=1)
        stop = (_CG_TOL**2) * (b * (b * inv_diag)).sum(dim=1)
        zero = torch.zeros_like(rz)
        done = torch.zeros((), dtype=torch.bool, device=x.device)
        self.cg_iterations = self.params.iterations  # iterations run (with an early exit: until converged)
        for i in range(self.params.iterations):
            done = done | (rz <= stop).all()
            if check and bool(done):
                self.cg_iterations = i
                break
            ap = self._apply(p, c_splat)
            pap = (p * ap).sum(dim=1)
            # Converged or degenerate channels (pAp = 0) keep their value instead of dividing by zero.
            alpha = torch.where((pap > 0) & ~done, rz / pap, zero)[:, None]
            x += p * alpha
            r -= ap * alpha
            z = r * inv_diag
            rz_new = (r * z).sum(dim=1)
            beta = torch.where((rz > 0) & ~done, rz_new / rz, zero)[:, None]  # once done, p = z stays bounded
            p = p * beta + z
            rz = rz_new
        return x


def refine_probabilities(reference, probs: torch.Tensor, confidence, params: BilateralParams) -> torch.Tensor:
    """:func:`engine.bilateral.refine_probabilities` on the device of ``probs``: (K+1, H, W) float32 back."""
    probs = torch.as_tensor(probs)
    check_probabilities(tuple(probs.shape), getattr(reference, "shape", None))
    grid = TorchBilateralGrid(reference, params, device=probs.device)
    if len(probs) == 2 and torch.as_tensor(confidence).dim() == 2:  # one object: the background is 1 - x, as there
        objects = grid.solve(probs[1:], confidence)
        refined = torch.cat([1.0 - objects, objects])
    else:
        refined = grid.solve(probs, confidence)
    refined.clamp_(0.0, 1.0)
    total = refined.sum(dim=0, keepdim=True)
    # A pixel where every channel was clipped to 0 falls back to background rather than NaN.
    empty = total[0] <= 1e-6
    refined[0] = torch.where(empty, 1.0, refined[0])
    total[0] = torch.where(empty, 1.0, total[0])
    return refined / total


def top_two_margin(probs: torch.Tensor) -> torch.Tensor:
    """(K + 1, H, W) -> (H, W): largest minus second-largest channel, as
    :func:`engine.bilateral_refiner.top_two_margin`."""
    first = probs[0].clone()
    second = torch.zeros_like(first)
    for channel in probs[1:]:
        second = torch.maximum(second, torch.minimum(first, channel))
        first = torch.maximum(first, channel)
    return first - second


class TorchBilateralRefiner:
    """:class:`engine.bilateral_refiner.BilateralRefiner` on the probabilities' device:
    ``refiner(frame, probs) -> probs``.

    ``frame`` is an (H, W, 3) uint8 RGB numpy array or tensor (any device), ``probs`` a (K+1, H, W)
    tensor; the result is float32 on the device of ``probs``. Confidence is the top-two margin.
    """

    def __init__(self, params: BilateralParams | None = None) -> None:
        self.params = params or BilateralParams()

    def __call__(self, frame, probs: torch.Tensor) -> torch.Tensor:
        probs = probs.to(torch.float32)
        return refine_probabilities(frame, probs, top_two_margin(probs), self.params)
