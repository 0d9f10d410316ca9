"""One video, streamed: ``VideoSession.step(frame, mask=None) -> probabilities``.

The session owns the per-video state (object registry, reference bank, online memory) and the
only resize in the engine: frames enter at any size, are resized so the longer side is
``max_size`` and both sides are multiples of 32, and probabilities leave at the frame's full size.
The engine never opens a file; decoding, encoding and progress bars stay outside.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.devices import reduced_precision
from engine.errors import VosError
from engine.memory import ObjectRegistry, OnlineMemory, PixelSet, ReferenceBank
from engine.model import OUTPUT_STRIDE, TIME_HORIZON, EmbeddingModel, coordinate_grid
from engine.motion import GridFlow, warp_back
from engine.retrieval import RetrievalConfig, knn_probabilities

REFINERS = ("none", "bilateral")
ALIGN = 32  # the backbone's coarsest stride: inner functions see multiples of it


@dataclass(frozen=True)
class SessionConfig:
    # Longer side of the image the network sees: the stride-8 grid limits how thin a part can be
    # found. On the dev split 640 beat 512 (trained head, two held-out seeds: J 0.807 -> 0.819); over
    # the 30 training sequences (five-fold cross-validation, benchmarks/cross_validate.py) 768 beat
    # 640 on 27 sequences of 30 (J 0.830 -> 0.839, F 0.833 -> 0.849) at 3.6 instead of 5.3 fps on
    # 2 cores (480p input); 896 was no better (J 0.841, F 0.849) and lost fast-moving objects.
    max_size: int = 768
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    online: bool = True
    # A small memory of recent frames beat larger ones on the dev split (J&F 0.749 at 1024 pixels,
    # 0.742 at 2048, 0.726 at 4096) and keeps retrieval cheap.
    memory_size: int = 1024  # pixels in the online memory (8 frames of 128)
    memory_threshold: float = 0.95  # a pixel joins the memory when its top probability reaches this
    memory_per_frame: int = 128  # at most this many pixels join per frame
    refine: str = "bilateral"
    # Temporal prior: an object is expected within ``prior_radius`` grid cells of where it was in
    # the previous frame, moved along the optical flow (``prior_flow``, engine.motion); elsewhere
    # its probability is scaled by ``prior_floor`` (1.0 disables). The k-NN votes are sharp (a
    # look-alike far away often gets 0.99), so the floor must be low to hold: with 0.1 a passer-by
    # in front of the camera took over bmx-bumps. An object whose highest probability in the
    # previous frame is below ``prior_lost`` is lost: the prior lets go of it, so retrieval over the
    # whole frame can find it again. Five-fold cross-validation over the 30 training sequences
    # (benchmarks/cross_validate.py): J 0.827 -> 0.830, F 0.827 -> 0.833 against radius 4 and floor
    # 0.1 alone (13 sequences up, 5 down).
    prior_radius: int = 4
    prior_floor: float = 0.01
    prior_flow: bool = True
    prior_lost: float = 0.5
    # Optionally project wide embeddings (the untrained features have 472 dimensions) onto the
    # first frame's top principal directions: retrieval cost is linear in the dimension. Off by
    # default: on the dev split 128 dimensions cut retrieval time by ~40% but J fell 0.774 -> 0.756.
    project_dim: int | None = None
    # Reduced precision where the hardware runs it natively (engine.devices.reduced_precision):
    # float16 on CUDA, bfloat16 on CPUs with AVX512-BF16/AMX; float32 elsewhere or when False.
    half: bool = True

    def __post_init__(self) -> None:
        if self.max_size < ALIGN:
            raise VosError(f"--max-size must be at least {ALIGN}.")
        if self.refine not in REFINERS:
            raise VosError(f"Unknown refinement '{self.refine}'; choose one of: {', '.join(REFINERS)}.")
        if not 0.0 < self.memory_threshold <= 1.0:
            raise VosError("The memory threshold must be in (0, 1].")
        if self.prior_radius < 0 or not 0.0 <= self.prior_floor <= 1.0 or not 0.0 <= self.prior_lost <= 1.0:
            raise VosError("The temporal prior needs a radius of zero or more, and a floor and a lost level in [0, 1].")

    @staticmethod
    def setting_names() -> tuple[str, ...]:
        """The names ``with_overrides`` takes: the session's own and the retrieval's."""
        own = [name for name in SessionConfig.__dataclass_fields__ if name != "retrieval"]
        return (*own, *RetrievalConfig.__dataclass_fields__)

    def with_overrides(self, **changes) -> SessionConfig:
        """A copy with the given settings changed; ``None`` values are ignored."""
        unknown = sorted(set(changes) - set(self.setting_names()))
        if unknown:
            raise VosError(f"Unknown session setting '{unknown[0]}'; choose from: {', '.join(self.setting_names())}.")
        retrieval_keys = {k for k in changes if k in RetrievalConfig.__dataclass_fields__}
        retrieval = replace(self.retrieval, **{k: changes[k] for k in retrieval_keys if changes[k] is not None})
        rest = {k: v for k, v in changes.items() if k not in retrieval_keys and v is not None}
        return replace(self, retrieval=retrieval, **rest)


def processing_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The (h, w) the network sees: longer side ``max_size`` (never upscaled), multiples of 32."""
    scale = min(1.0, max_size / max(height, width))
    return (
        max(ALIGN, round(height * scale / ALIGN) * ALIGN),
        max(ALIGN, round(width * scale / ALIGN) * ALIGN),
    )


class VideoSession:
    """Segments one video frame by frame. Create one per video."""

    def __init__(
        self,
        model: EmbeddingModel,
        config: SessionConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        refiner=None,
    ) -> None:
        self.model = model
        self.config = config or SessionConfig()
        self.device = torch.device(device)
        self.registry = ObjectRegistry()
        self.bank = ReferenceBank()
        self.memory = OnlineMemory(self.config.memory_size if self.config.online else 0)
        self.refiner = refiner
        if self.config.refine == "bilateral" and refiner is None:
            from engine.bilateral import BilateralRefiner

            self.refiner = BilateralRefiner()
        self.frame_index = 0
        self.frame_size: tuple[int, int] | None = None
        self.timings: dict[str, float] = defaultdict(float)
        self._generator = torch.Generator().manual_seed(0)
        self._previous: torch.Tensor | None = None  # (K + 1, gh, gw) grid probabilities of the last frame
        self._projection: torch.Tensor | None = None  # (D, project_dim), fitted on the first reference
        self._flow = GridFlow() if self.config.prior_flow and self.config.prior_floor < 1.0 else None

    # ---- edges ---------------------------------------------------------------------------------
    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (h, w, 3) uint8 RGB, h and w multiples of 32."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise VosError("A frame must be an (H, W, 3) uint8 RGB array.")
        height, width = frame.shape[:2]
        if self.frame_size is None:
            self.frame_size = (height, width)
        elif self.frame_size != (height, width):
            raise VosError(
                f"Frame {self.frame_index} is {width}x{height}, but the video started at "
                f"{self.frame_size[1]}x{self.frame_size[0]}."
            )
        h, w = processing_size(height, width, self.config.max_size)
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (height, width) else frame
        return np.ascontiguousarray(small)

    def _timed(self, stage: str, start: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[stage] += now - start
        return now

    # ---- phases --------------------------------------------------------------------------------
    @torch.inference_mode()
    def _embed(self, image: torch.Tensor, t: float) -> PixelSet:
        dtype = reduced_precision(self.device) if self.config.half else None
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = self.model.embed(image, t)[0]  # (D, gh, gw)
        d, gh, gw = emb.shape
        keys = emb.reshape(d, -1).T.contiguous().to(dtype or torch.float32)
        if self._projection is None and self.config.project_dim and self.config.project_dim < d:
            # Right singular vectors of the first frame's keys: dot products of projected unit
            # vectors stay close to the cosines, which is all retrieval uses.
            _, _, vh = torch.linalg.svd(keys.float(), full_matrices=False)
            self._projection = vh[: self.config.project_dim].T.to(keys.dtype).contiguous()
        if self._projection is not None:
            keys = keys @ self._projection
        coords = coordinate_grid(gh, gw, t, device=self.device).reshape(3, -1).T
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return PixelSet(keys, coords, empty)

    def _mask_to_grid(self, mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """(H, W) user ids -> (gh * gw,) slot per grid cell, each object keeping at least one cell."""
        slots = torch.from_numpy(self.registry.to_slots(mask)).to(self.device)
        one_hot = F.one_hot(slots, self.registry.num_slots).permute(2, 0, 1)[None].float()
        fractions = F.adaptive_avg_pool2d(one_hot, grid)[0].reshape(self.registry.num_slots, -1)
        labels = fractions.argmax(0)
        for slot in range(1, self.registry.num_slots):
            if not (labels == slot).any():  # an object thinner than a cell: keep its best cell
                labels[fractions[slot].argmax()] = slot
        return labels

    def _add_reference(self, pixels: PixelSet, mask: np.ndarray, grid: tuple[int, int]) -> None:
        if mask.shape != self.frame_size:
            raise VosError(
                f"The mask is {mask.shape[1]}x{mask.shape[0]} but the frame is "
                f"{self.frame_size[1]}x{self.frame_size[0]}."
            )
        ids = [int(i) for i in np.unique(mask) if i != 0]
        if not ids:
            raise VosError("The mask has no object pixels: mark at least one object.")
        self.registry.register(ids)
        labels = self._mask_to_grid(mask.astype(np.uint8), grid)
        self.bank.add(PixelSet(pixels.keys, pixels.coords, labels))

    def _bank(self) -> PixelSet:
        parts = [p for p in (self.bank.pixels(), self.memory.pixels()) if p is not None]
        if not parts:
            raise VosError("The first frame needs a mask: the session has no reference yet.")
        return PixelSet.concat(parts) if len(parts) > 1 else parts[0]

    def _apply_prior(
        self, probs: torch.Tensor, grid: tuple[int, int], flow: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(M, K + 1) -> (M, K + 1): damp objects far from where they were in the previous frame."""
        previous, self._previous = self._previous, None
        if previous is None or self.config.prior_floor >= 1.0 or previous.shape[0] != probs.shape[1]:
            return probs
        if flow is not None:
            previous = warp_back(previous, flow)
        r = self.config.prior_radius
        near = F.max_pool2d(previous[None, 1:], 2 * r + 1, stride=1, padding=r)[0]  # (K, gh, gw)
        lost = previous[1:].amax(dim=(1, 2)) < self.config.prior_lost
        near[lost] = 1.0
        scale = torch.ones_like(probs)
        scale[:, 1:] = self.config.prior_floor + (1.0 - self.config.prior_floor) * near.reshape(len(near), -1).T
        probs = probs * scale
        return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def _remember(self, pixels: PixelSet, probs: torch.Tensor) -> None:
        """Confident pixels of this frame join the online memory (at most ``memory_per_frame``)."""
        confidence, labels = probs.max(dim=1)
        chosen = torch.nonzero(confidence >= self.config.memory_threshold).squeeze(1)
        if len(chosen) > self.config.memory_per_frame:
            pick = torch.randperm(len(chosen), generator=self._generator)[: self.config.memory_per_frame]
            chosen = chosen[pick.to(chosen.device)]
        self.memory.add(PixelSet(pixels.keys[chosen], pixels.coords[chosen], labels[chosen]))

    # ---- the streaming call --------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> torch.Tensor:
        """Segment one frame. frame (H, W, 3) uint8 RGB; mask (H, W) object ids or None.

        Returns probabilities (K + 1, H, W) float32 on the CPU: background, then one channel per
        object in registry order. A frame with a mask returns that mask as probabilities.
        """
        start = time.perf_counter()
        small = self._prepare(frame)
        image = torch.from_numpy(small).to(self.device).permute(2, 0, 1)[None].float()
        t = self.frame_index / TIME_HORIZON
        pixels = self._embed(image, t)
        grid = (image.shape[-2] // OUTPUT_STRIDE, image.shape[-1] // OUTPUT_STRIDE)
        start = self._timed("embed", start)
        flow = None
        if self._flow is not None:
            flow = self._flow.step(small, grid)
            start = self._timed("flow", start)
        height, width = self.frame_size
        if mask is not None:
            self._add_reference(pixels, mask, grid)
            self.frame_index += 1
            slots = torch.from_numpy(self.registry.to_slots(mask.astype(np.uint8)))
            given = F.one_hot(slots, self.registry.num_slots).permute(2, 0, 1).float()
            self._previous = F.adaptive_avg_pool2d(given[None], grid)[0].to(self.device)
            return given
        probs, _ = knn_probabilities(pixels, self._bank(), self.registry.num_slots, self.config.retrieval)
        probs = self._apply_prior(probs, grid, flow)
        self._previous = probs.T.reshape(-1, *grid).float()
        start = self._timed("retrieve", start)
        if self.config.online:
            self._remember(pixels, probs)
            start = self._timed("memory", start)
        coarse = probs.T.reshape(1, -1, *grid)
        full = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
        full = full.float().cpu()
        if self.refiner is not None:
            full = self.refiner(frame, full)
        self._timed("refine", start)
        self.frame_index += 1
        return full

    def to_ids(self, probs: torch.Tensor) -> np.ndarray:
        """(K + 1, H, W) probabilities -> (H, W) uint8 mask of user object ids."""
        return self.registry.to_ids(channel_argmax(probs).numpy())


def channel_argmax(probs: torch.Tensor) -> torch.Tensor:
    """``probs.argmax(0)`` for a few channels, ties to the first, ~10x faster on a CPU.

    torch's reduction over the outer dimension of a (K + 1, H, W) tensor strides through memory
    (40 ms at 480p on 2 cores); one elementwise pass per channel is contiguous (3 ms).
    """
    best = probs[0]
    ids = torch.zeros(probs.shape[1:], dtype=torch.long, device=probs.device)
    for channel in range(1, probs.shape[0]):
        better = probs[channel] > best
        ids[better] = channel
        best = torch.maximum(best, probs[channel])
    return ids


def segment_video(
    model: EmbeddingModel,
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    *,
    config: SessionConfig | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[np.ndarray]:
    """Yield an (H, W) uint8 id mask per frame; the first frame's is ``first_mask`` itself."""
    session = VideoSession(model, config, device=device)
    for index, frame in enumerate(frames):
        probs = session.step(frame, first_mask if index == 0 else None)
        yield session.to_ids(probs)


def session_config_for(model: EmbeddingModel, **overrides) -> SessionConfig:
    """The model's own inference settings (saved with it), then the caller's non-None overrides."""
    base = SessionConfig().with_overrides(**model.config.inference)
    return base.with_overrides(**overrides)
