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

    def _gray(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        size = (max(8, round(width * self.scale)), max(8, round(height * self.scale)))
        return cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)

    def step(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor | None:
        """(h, w, 3) uint8 RGB -> (gh, gw, 2) displacement in grid cells from each cell of this
        frame to its position in the previous frame; ``None`` for the first frame."""
        gray = self._gray(image)
        previous, self._previous = self._previous, gray
        if previous is None or previous.shape != gray.shape:
            return None
        flow = self._dis.calc(gray, previous, None)  # gray[y, x] ~ previous[y + fy, x + fx]
        gh, gw = grid
        cells = cv2.resize(flow, (gw, gh), interpolation=cv2.INTER_AREA)
        cells[..., 0] *= gw / gray.shape[1]
        cells[..., 1] *= gh / gray.shape[0]
        return torch.from_numpy(cells)


def warp_back(maps: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """(C, gh, gw) maps of the previous frame, (gh, gw, 2) backward flow in cells -> the maps moved
    to this frame: each cell reads the previous maps where the flow says it came from."""
    c, gh, gw = maps.shape
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    x = (xs + flow[..., 0] + 0.5) * (2.0 / gw) - 1.0  # align_corners=False convention
    y = (ys + flow[..., 1] + 0.5) * (2.0 / gh) - 1.0
    where = torch.stack([x, y], dim=-1)[None].to(maps.device)
    return F.grid_sample(maps[None].float(), where, mode="bilinear", padding_mode="border", align_corners=False)[0]
