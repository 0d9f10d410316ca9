"""``vosctl batch``: parse, call :func:`vosctl.batch_run.run_batch`, show one progress display, summarise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from engine.devices import default_batch, resolve_device
from engine.errors import VosError
from engine.factory import build_model
from engine.session import session_config_for
from vosctl.batch_run import parse_shard, run_batch, torchrun_rank
from vosctl.console import frame_progress, out, reported_errors
from vosctl.options import (
    AnnotationChoice,
    BatchOption,
    DebugOption,
    DeviceOption,
    FullPrecisionOption,
    KOption,
    MaxSizeOption,
    ModelOption,
    OnlineOption,
    OverwriteOption,
    PresetOption,
    RefineOption,
    ThreadsOption,
    session_overrides,
)
from vosctl.threads import compute_threads


def batch(
    root: Annotated[
        Path,
        typer.Argument(
            help="A DAVIS / YouTube-VOS root (JPEGImages/[480p/]NAME/, Annotations/[480p/]NAME/), or a folder of "
            "videos NAME.mp4 with NAME.png (frame 0) or a folder NAME/ of sparse annotations."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Results: OUT/NAME/00000.png ... (palette PNGs).")],
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write OUT/NAME.vos.mp4 overlay videos.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip videos whose outputs are complete; redo the others.")
    ] = False,
    shard: Annotated[
        str | None, typer.Option("--shard", help="I/N: take every N-th video from the I-th (0-based).")
    ] = None,
    annotations: Annotated[
        AnnotationChoice,
        typer.Option(
            "--annotations",
            help="auto: a layout annotated on every frame (ground truth) gives only its first mask, else all; "
            "all; first.",
        ),
    ] = AnnotationChoice.auto,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    max_size: MaxSizeOption = None,
    online: OnlineOption = None,
    refine: RefineOption = None,
    k: KOption = None,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
    full_precision: FullPrecisionOption = False,
    preset: PresetOption = None,
    batch_size: BatchOption = None,
    debug: DebugOption = False,
) -> None:
    """Segment every video under ROOT with one model; a video that fails is reported and the others go on.

    Under torchrun each rank takes its share by itself (exit code 1 if any video failed):
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m vosctl batch DATA
    --out results --resume
    """
    with reported_errors(debug):
        torch.set_num_threads(compute_threads(threads))
        parts = parse_shard(shard) if shard is not None else None
        torch_device = resolve_device(device)
        rank, world = torchrun_rank()
        if world > 1 and torch_device.type == "cuda":
            import os

            torch_device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        net = build_model(model, torch_device)  # once for every video
        config = session_config_for(
            net,
            **session_overrides(
                preset=preset, max_size=max_size, online=online, k=k, refine=refine, full_precision=full_precision
            ),
        )
        progress = frame_progress()
        videos = progress.add_task("videos", total=None, fps=0.0)
        frames = progress.add_task("frames", total=None, fps=0.0)
        counted = {"frames": 0, "before": 0}

        def on_share(total: int) -> None:
            progress.update(videos, total=total)
            progress.start()

        def on_video(name: str, total: int | None) -> None:
            counted["before"] = counted["frames"]
            progress.update(frames, description=f"{name}", total=total, completed=0)

        def on_frame(done: int) -> None:
            counted["frames"] = counted["before"] + done
            elapsed = progress.tasks[videos].elapsed or 0.0
            rate = counted["frames"] / elapsed if elapsed > 0 else 0.0
            progress.update(frames, completed=done, fps=rate)
            progress.update(videos, fps=rate)

        def on_result(video) -> None:
            progress.advance(videos)
            if video.status == "failed":
                progress.console.print(f"[bold red]Failed:[/] {video.name}: {video.error}")

        try:
            result = run_batch(
                root=root,
                out=out_dir,
                model=net,
                config=config,
                device=torch_device,
                overlay=overlay,
                resume=resume,
                overwrite=overwrite,
                shard=parts,
                annotations=annotations.value,
                batch=batch_size or default_batch(torch_device),
                on_share=on_share,
                on_video=on_video,
                on_frame=on_frame,
                on_result=on_result,
            )
        finally:
            progress.stop()
        share = f" (rank {rank} of {world})" if world > 1 else ""
        share += f" (shard {shard})" if shard else ""
        out.print(
            f"{len(result.videos)} of {result.total} videos{share}: {result.count('done')} segmented, "
            f"{result.count('skipped')} already complete, {result.count('failed')} failed; "
            f"{counted['frames']} frames. Results in {out_dir}."
        )
        for video in result.failed:
            out.print(f"  failed {video.name}: {video.error}")
        if result.failed:
            raise VosError(f"{len(result.failed)} video{'s' if len(result.failed) > 1 else ''} failed (listed above).")
