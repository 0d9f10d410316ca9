"""Every check ``vosctl segment`` can make before the model loads: the input, the mask, the outputs.

A run that is going to fail on its arguments fails here, in a fraction of a second, before anything
is written; the pipeline runs the same checks again, so the Python API is as safe as the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import VosError
from vosctl.masks import Mask, fit_mask, read_mask
from vosctl.outputs import OutputPlan, plan_outputs
from vosctl.video import Frame, open_source


@dataclass
class CheckedRun:
    """The first-frame ``mask`` (read and fitted to the displayed frame) and the checked output ``plan``."""

    mask: Mask
    plan: OutputPlan
    frame_count: int | None


def first_frame(video: Path, *, fps: float) -> tuple[Frame, int | None]:
    """Decode only the first frame (as shown: rotation applied) and the frame count the container reports."""
    with open_source(video, fps=fps) as source:
        for item in source.items():
            if isinstance(item, Frame):
                return item, source.frame_count
    raise VosError(f"The video {video} has no frames.")  # items() raises first; kept for clarity


def check_segment(
    *,
    video: Path,
    mask: Path,
    output: Path | None = None,
    overlay: bool = True,
    masks_dir: Path | None = None,
    mask_video: Path | None = None,
    overwrite: bool = False,
    fps: float = 24.0,
) -> CheckedRun:
    """Check a run's input, mask and outputs; a :class:`VosError` names the first problem."""
    video = Path(video)
    if not video.exists() and not video.is_symlink():
        raise VosError(f"Input {video} does not exist.")
    first_mask = read_mask(mask)
    frame, frame_count = first_frame(video, fps=fps)
    height, width = frame.image.shape[:2]
    fitted = fit_mask(first_mask, height, width, rotation=frame.rotation)
    plan = plan_outputs(
        video=video,
        mask=Path(mask),
        output=output,
        overlay=overlay,
        masks_dir=masks_dir,
        mask_video=mask_video,
        overwrite=overwrite,
    )
    return CheckedRun(mask=fitted, plan=plan, frame_count=frame_count)
