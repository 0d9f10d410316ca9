"""Every check ``vosctl segment`` can make before the model loads: the input, the masks, the outputs.

A run that is going to fail on its arguments fails here, in a fraction of a second, before anything
is written; the pipeline runs the same checks again, so the Python API is as safe as the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import VosError
from vosctl.annotations import Annotations, Direction, Passes, gather_annotations, plan_passes, read_annotations
from vosctl.masks import Mask
from vosctl.outputs import OutputPlan, plan_outputs
from vosctl.video import Frame, open_source


@dataclass
class CheckedRun:
    """The ``annotations`` (read and fitted to the displayed frame), the ``passes`` over the video
    and the checked output ``plan``."""

    annotations: Annotations
    passes: Passes
    plan: OutputPlan
    frame_count: int | None

    @property
    def mask(self) -> Mask:
        """The earliest mask."""
        return self.annotations.masks[self.annotations.first]


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
    mask: Path | None = None,
    masks: Sequence[str | Path] = (),
    masks_in: Path | None = None,
    direction: Direction | str | None = None,
    output: Path | None = None,
    overlay: bool = True,
    masks_dir: Path | None = None,
    mask_video: Path | None = None,
    overwrite: bool = False,
    fps: float = 24.0,
) -> CheckedRun:
    """Check a run's input, masks and outputs; a :class:`VosError` names the first problem.

    ``mask`` is frame 0's mask; ``masks`` are ``--mask`` values (``PATH`` or ``N=PATH``), ``masks_in``
    a folder of sparse annotations. A mask beyond the video's end is caught here when the container
    reports its frame count, else when decoding ends (and then nothing is written either).
    """
    video = Path(video)
    if not video.exists() and not video.is_symlink():
        raise VosError(f"Input {video} does not exist.")
    files = gather_annotations([*([mask] if mask is not None else []), *masks], masks_in)
    annotations = read_annotations(files)
    frame, frame_count = first_frame(video, fps=fps)
    height, width = frame.image.shape[:2]
    fitted = annotations.fitted(height, width, rotation=frame.rotation)
    fitted.check_length(frame_count)
    plan = plan_outputs(
        video=video,
        mask=list(files.values()) + ([Path(masks_in)] if masks_in is not None else []),
        output=output,
        overlay=overlay,
        masks_dir=masks_dir,
        mask_video=mask_video,
        overwrite=overwrite,
    )
    passes = plan_passes(list(fitted.masks), direction)
    return CheckedRun(annotations=fitted, passes=passes, plan=plan, frame_count=frame_count)
