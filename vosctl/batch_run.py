"""``vosctl batch`` as a function: every video under a dataset root, one model, one process.

Each video goes through :func:`vosctl.pipeline.segment_file`, the same path as ``vosctl segment``,
so a video's results are those of ``vosctl segment`` run on it alone. Results go to
``OUT/<name>/00000.png ...`` (palette PNGs, the DAVIS results layout) and, with ``overlay``,
``OUT/<name>.vos.mp4``. A video that fails is reported and the others go on.

Sharing a dataset among processes or machines: ``shard=(i, n)`` takes every n-th video from the
i-th (0-based); under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) each rank then takes every
WORLD_SIZE-th of those from its RANK, with no process group needed, so the same command on many
machines splits the work::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vosctl batch DATA --out results --resume
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.datasets import VideoEntry, annotation_frames, frame_files, list_videos
from engine.errors import VosError
from engine.session import SessionConfig
from vosctl.outputs import MARKER
from vosctl.pipeline import segment_file

ANNOTATIONS = ("auto", "all", "first")


@dataclass
class VideoResult:
    name: str
    status: str  # "done", "skipped" (complete from an earlier run) or "failed"
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    videos: list[VideoResult] = field(default_factory=list)
    total: int = 0  # videos in the whole dataset, before sharding

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.videos)

    @property
    def failed(self) -> list[VideoResult]:
        return [v for v in self.videos if v.status == "failed"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N), 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise VosError(f"--shard takes I/N, e.g. 0/4 (the first of four shards), not {text!r}.") from None
    if count < 1 or not 0 <= index < count:
        raise VosError(f"--shard {text}: I must be 0 to N-1 and N at least 1.")
    return index, count


def torchrun_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) when started by torchrun, else (0, 1); read when called, never at import."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def my_share(videos: list, shard: tuple[int, int] | None = None, rank: tuple[int, int] = (0, 1)) -> list:
    """Every n-th video of the shard, then every WORLD_SIZE-th of those for this rank."""
    index, count = shard or (0, 1)
    mine = videos[index::count]
    return mine[rank[0] :: rank[1]]


def is_complete(out: Path, name: str, *, overlay: bool) -> bool:
    """A video's masks folder appears (renamed into place, marker inside) only when all its masks
    are written; its overlay is published after it."""
    masks = out / name
    if not (masks / MARKER).is_file():
        return False
    return not overlay or (out / f"{name}.vos.mp4").is_file()


def chosen_annotations(entry: VideoEntry, mode: str) -> dict[int, Path]:
    """{frame: PNG} given to the video. ``auto``: in a DAVIS / YouTube-VOS layout where every frame is
    annotated (ground truth, as in DAVIS), only the first is given; otherwise all are (sparse)."""
    if mode not in ANNOTATIONS:
        raise VosError(f"--annotations takes {', '.join(ANNOTATIONS)}, not {mode!r}.")
    frames = annotation_frames(entry)
    first = next(iter(frames))
    if mode == "first" or (mode == "auto" and entry.by_name and len(frames) == len(frame_files(entry.source))):
        return {first: frames[first]}
    return frames


def run_batch(
    *,
    root: Path,
    out: Path,
    model: torch.nn.Module,
    config: SessionConfig,
    device: str | torch.device,
    overlay: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    annotations: str = "auto",
    batch: int = 1,
    on_share: Callable[[int], None] | None = None,
    on_video: Callable[[str, int | None], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_result: Callable[[VideoResult], None] | None = None,
) -> BatchResult:
    """Segment this process's share of the videos under ``root``; never raises for one video's failure."""
    root, out = Path(root), Path(out)
    videos = list_videos(root)
    if out.resolve() == root.resolve() or root.resolve().is_relative_to(out.resolve()):
        raise VosError(f"--out {out} is, or holds, the dataset {root}; give the results a folder of their own.")
    mine = my_share(videos, shard, torchrun_rank())
    result = BatchResult(total=len(videos))
    if on_share is not None:
        on_share(len(mine))
    for entry in mine:
        if resume and is_complete(out, entry.name, overlay=overlay):
            video = VideoResult(entry.name, "skipped")
        else:
            video = _run_one(
                entry, out, model, config, device, overlay, overwrite or resume, annotations, batch, on_video, on_frame
            )
        result.videos.append(video)
        if on_result is not None:
            on_result(video)
    return result


def _run_one(entry, out, model, config, device, overlay, overwrite, annotations, batch, on_video, on_frame):
    start = time.perf_counter()
    try:
        given = chosen_annotations(entry, annotations)
        out.mkdir(parents=True, exist_ok=True)
        done = segment_file(
            video=entry.source,
            masks=[f"{frame}={path}" for frame, path in given.items()],
            model=model,
            config=config,
            device=device,
            output=out / f"{entry.name}.vos.mp4" if overlay else None,
            overlay=overlay,
            masks_dir=out / entry.name,
            overwrite=overwrite,
            on_start=(lambda total: on_video(entry.name, total)) if on_video is not None else None,
            on_frame=on_frame,
            batch=batch,
        )
    except VosError as error:
        return VideoResult(entry.name, "failed", seconds=time.perf_counter() - start, error=str(error))
    except Exception as error:  # a bug on one video: reported, the others go on
        message = f"unexpected {type(error).__name__}: {error}"
        return VideoResult(entry.name, "failed", seconds=time.perf_counter() - start, error=message)
    return VideoResult(entry.name, "done", done.frames, done.seconds, notes=done.notes)
