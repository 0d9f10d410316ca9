"""Where each grid cell of this frame was in the previous one: dense optical flow on the grid.

The temporal prior expects an object near where it was in the previous frame. A fixed radius
around the old position misses fast motion and, made wide enough for it, lets in look-alikes
nearby. Moving the previous probabilities along the optical flow first lets the prior follow the
motion with a small radius. Flow is OpenCV's DIS (Kroeger et al., ECCV 2016): a few milliseconds a
frame on a CPU at half the network's input size.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


class GridFlow:
    """Backward flow between consecutive frames, resampled to the embedding grid."""

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = scale
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._previous: np.ndarray | None = None
        # The last step's flow at its own resolution: (h, w, 2) displacement in its pixels; None
        # for the first frame. A frame carried whole (engine.refine_stage) is moved along it.
        self.pixels: torch.Tensor | None = None

    def _gray(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        size = (max(8, round(width * self.scale)), max(8, round(height * self.scale)))
        return cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)

    def step(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor | None:
        """(h, w, 3) uint8 RGB -> (gh, gw, 2) displacement in grid cells from each cell of this
        frame to its position in the previous frame; ``None`` for the first frame."""
        gray = self._gray(image)
        previous, self._previous = self._previous, gray
        self.pixels = None
        if previous is None or previous.shape != gray.shape:
            return None
        flow = self._dis.calc(gray, previous, None)  # gray[y, x] ~ previous[y + fy, x + fx]
        self.pixels = torch.from_numpy(flow)
        gh, gw = grid
        cells = cv2.resize(flow, (gw, gh), interpolation=cv2.INTER_AREA)
        cells[..., 0] *= gw / gray.shape[1]
        cells[..., 1] *= gh / gray.shape[0]
        return torch.from_numpy(cells)


def warp_back(maps: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(C, gh, gw) maps of the previous frame, (gh, gw, 2) backward flow in cells -> the maps moved
    to this frame: each cell reads the previous maps where the flow says it came from."""
    return _sample_along(maps, flow)


def _sample_along(maps: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(C, H, W) maps, (H, W, 2) backward flow in their own pixels -> grid_sample's bilinear read
    of each pixel where the flow points (the border repeated)."""
    _, height, width = maps.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=flow.device),
        torch.arange(width, dtype=torch.float32, device=flow.device),
        indexing="ij",
    )
    x = (xs + flow[..., 0] + 0.5) * (2.0 / width) - 1.0  # align_corners=False convention
    y = (ys + flow[..., 1] + 0.5) * (2.0 / height) - 1.0
    where = torch.stack([x, y], dim=-1)[None].to(maps.device)
    return F.grid_sample(maps[None].float(), where, mode="bilinear", padding_mode="border", align_corners=False)[0]


def warp_frame(probs: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(C, H, W) probabilities of the previous frame, (h, w, 2) backward flow in pixels of an h x w
    image of the same view -> the probabilities moved to this frame: each pixel reads the previous
    ones (bilinearly, the border repeated) where the flow, resized to H x W, says it came from."""
    if probs.device.type == "cpu":  # OpenCV's remap: a quarter of grid_sample's time at 480p on one core
        return _remap(probs, flow)
    return _grid_sample(probs, flow)


def _remap(probs: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    _, height, width = probs.shape
    h, w = flow.shape[:2]
    field = cv2.resize(flow.cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
    map_x = field[..., 0] * np.float32(width / w) + np.arange(width, dtype=np.float32)
    map_y = field[..., 1] * np.float32(height / h) + np.arange(height, dtype=np.float32)[:, None]
    moved = [
        cv2.remap(channel, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        for channel in probs.float().numpy()
    ]
    return torch.from_numpy(np.stack(moved))


def _grid_sample(probs: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """:func:`warp_frame` off the CPU: the flow resized and scaled to the probabilities' pixels."""
    _, height, width = probs.shape
    h, w = flow.shape[:2]
    field = flow.permute(2, 0, 1)[None].to(probs.device, torch.float32)
    field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)[0]
    scale = torch.tensor([width / w, height / h], dtype=torch.float32, device=probs.device)
    return _sample_along(probs, field.permute(1, 2, 0) * scale)
