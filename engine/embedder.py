"""The embed stage: frames -> per-pixel keys on the stride-8 grid. Stateless, so it runs ahead in batches.

The only resize of the engine's input is here: a frame enters at any size and is resized so the
longer side is ``max_size`` and both sides are multiples of 32; everything after it sees the grid.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.config import ALIGN
from engine.devices import reduced_precision
from engine.errors import VosError
from engine.memory import PixelSet
from engine.model import OUTPUT_STRIDE, EmbeddingModel, coordinate_grid
from engine.openvino_runtime import OpenVinoEmbedding
from engine.runtime import OnnxEmbedding, inference_copy, resolve_runtime
from engine.window import Box

MAX_ENLARGE = 2.0  # a frame is enlarged at most this much (a tiny video gains nothing from more)


def processing_size(height: int, width: int, max_size: int, min_size: int = 0) -> tuple[int, int]:
    """The (h, w) the network sees, multiples of 32: longer side ``max_size`` at most, and a smaller
    frame enlarged towards a longer side of ``min_size`` (0: never enlarged), at most ``MAX_ENLARGE``
    times."""
    longer = max(height, width)
    scale = min(1.0, max_size / longer)
    if min_size and longer < min_size:
        scale = min(min(max_size, min_size) / longer, MAX_ENLARGE)
    return (
        max(ALIGN, round(height * scale / ALIGN) * ALIGN),
        max(ALIGN, round(width * scale / ALIGN) * ALIGN),
    )


def check_frame(frame: np.ndarray) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise VosError("A frame must be an (H, W, 3) uint8 RGB array.")


class FrameEmbedder:
    """``embed(images, times) -> [PixelSet]``: keys (gh * gw, D) and (x, y, t) coordinates per image.

    ``half`` uses the device's native reduced precision (float16 on CUDA, bfloat16 on CPUs with
    AVX512-BF16/AMX). On a CPU the network runs in OpenVINO (either precision), ONNX Runtime
    (float32) or torch (``runtime``: engine.runtime, engine.openvino_runtime); elsewhere in torch.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        max_size: int,
        min_size: int = 0,
        device: torch.device,
        half: bool = True,
        runtime: str = "auto",
    ) -> None:
        self.model = model
        self.max_size = max_size
        self.min_size = min_size
        self.device = torch.device(device)
        self.dtype = reduced_precision(self.device) if half else None
        self.runtime = resolve_runtime(runtime, self.device, self.dtype is not None)
        self._fast: EmbeddingModel | None = None
        # The exported graph compiled by the runtime ("onnx" or "openvino"), once per embedder.
        self._exported: OnnxEmbedding | OpenVinoEmbedding | None = None

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (h, w, 3) uint8 RGB at the processing size.

        Bilinear, where OpenCV's area average took 2.0 ms a frame on one core against 0.34 (854 ->
        768 pixels): CV J&F -0.25 / +0.14 / +0.13 with seeds 0 / 1 / 2 at 768, +0.17 / -0.06 at
        640 (with every other frame carried, the defaults since the twenty-ninth round; README,
        twenty-eighth round)."""
        check_frame(frame)
        height, width = frame.shape[:2]
        h, w = processing_size(height, width, self.max_size, self.min_size)
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != (height, width) else frame
        return np.ascontiguousarray(small)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray], times: list[float], box: Box | None = None) -> list[PixelSet]:
        """``images`` from :meth:`prepare`, all of one size; ``times`` their normalised t. With a
        ``box`` (engine.window; one image) the network sees only the box and every cell outside it
        gets a zero key, which retrieval must not query."""
        h, w = images[0].shape[:2]
        gh, gw = h // OUTPUT_STRIDE, w // OUTPUT_STRIDE
        coords = torch.stack([coordinate_grid(gh, gw, t, device=self.device) for t in times])
        if box is not None:
            if len(images) != 1:
                raise VosError("A box is for one image at a time.")
            rows, cols = box.pixels()
            crop = torch.from_numpy(images[0][None, rows, cols]).to(self.device).permute(0, 3, 1, 2).float()
            inner = self._network(crop, coords[:, :, box.y0 : box.y1, box.x0 : box.x1])
            emb = inner.new_zeros(1, gh, gw, inner.shape[1])  # one row per cell, as the keys are used
            emb[:, box.y0 : box.y1, box.x0 : box.x1] = inner.permute(0, 2, 3, 1)
            keys = emb.reshape(1, gh * gw, -1).to(self.dtype or torch.float32)
            return [PixelSet(keys[0], coords[0].reshape(3, -1).T, torch.empty(0, dtype=torch.long, device=self.device))]
        batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float()
        emb = self._network(batch, coords)  # (B, D, gh, gw)
        # (gh * gw, D) views, not copies: a copy that puts each cell's key in one row costs 2.9 ms a
        # frame at 768x416 (600 dimensions), and retrieval gathers only the rows it needs (0.4 ms).
        keys = emb.flatten(2).transpose(1, 2).to(self.dtype or torch.float32)
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return [PixelSet(keys[i], coords[i].reshape(3, -1).T, empty) for i in range(len(images))]

    def load(self) -> None:
        """Compile the network for its runtime now rather than at the first frame (OpenVINO: its
        compiled network read back from the cache, or exported and compiled; nothing for torch)."""
        if self.runtime in ("openvino", "onnx") and self._exported is None:
            self._exported = (
                OpenVinoEmbedding.for_model(self.model, bfloat16=self.dtype is not None)
                if self.runtime == "openvino"
                else OnnxEmbedding.for_model(self.model)
            )

    def _network(self, batch: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        if self.runtime in ("openvino", "onnx"):
            self.load()
            return self._exported(batch, coords)
        if self.dtype is not None:
            with torch.autocast(self.device.type, dtype=self.dtype):
                return self.model.embed_at(batch, coords)
        if self.device.type == "cpu":
            if self._fast is None:
                self._fast = inference_copy(self.model)
            # Channels last, as computed: its keys are already one row per cell.
            return self._fast.embed_at(batch.contiguous(memory_format=torch.channels_last), coords)
        return self.model.embed_at(batch, coords)
