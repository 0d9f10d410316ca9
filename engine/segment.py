"""A whole video as a generator of id masks: ``segment_video(model, frames, first_mask)``.

Frames are refined in frame order after the session has stepped on, as the CLI refines them
(vosctl.pipeline): a frame carried between two key frames waits for the second (engine.between).
The training run's validation (trainer.validate) goes through it, so it scores what ``vosctl
segment`` gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from engine.between import InOrder
from engine.config import SessionConfig
from engine.model import EmbeddingModel
from engine.session import VideoSession

__all__ = ["segment_video"]


def segment_video(
    model: EmbeddingModel,
    frames: Iterable[np.ndarray],
    first_mask: np.ndarray,
    *,
    config: SessionConfig | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[np.ndarray]:
    """Yield an (H, W) uint8 id mask per frame; the first frame's is ``first_mask`` itself. Refined
    in frame order after stepping on, as the CLI refines: a carried frame waits for the next key
    frame (engine.between), so a mask may come a frame after its frame was read."""
    session = VideoSession(model, config, device=device)
    in_order = InOrder(session)
    for index, frame in enumerate(frames):
        given = first_mask if index == 0 else None
        (probs,) = session.step_batch([frame], [given], refine=False, later=True)
        in_order.add((frame, probs, given is not None), probs)
        for image, p, was_given in in_order.ready():
            yield session.output(image, p, was_given)
    for image, p, was_given in in_order.finish():
        yield session.output(image, p, was_given)
