"""``vosctl segment``: parse, call :func:`vosctl.pipeline.segment_file`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from engine.devices import default_batch, resolve_device
from engine.factory import build_model
from engine.session import session_config_for
from vosctl.console import console, frame_progress, out, reported_errors
from vosctl.options import (
    BatchOption,
    DebugOption,
    DeviceOption,
    DirectionOption,
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
from vosctl.pipeline import overlay_preset_for, segment_file
from vosctl.preflight import check_segment
from vosctl.threads import compute_threads


def segment(
    video: Annotated[Path, typer.Argument(help="Input video file, or a folder of JPEG/PNG frames.")],
    mask: Annotated[
        list[str] | None,
        typer.Option(
            "--mask",
            help="A mask: PATH for frame 0, N=PATH for frame N (0-based, decode order); may be given several "
            "times. Binary, palette or colour PNG. A later mask adds the objects it holds from that frame on "
            "and corrects those already tracked.",
        ),
    ] = None,
    masks_in: Annotated[
        Path | None,
        typer.Option(
            "--masks-in",
            help="A folder of sparse annotations: each PNG is the mask of the frame numbered by the last digits "
            "of its name (00045.png, frame_000045.png), 0-based in decode order.",
        ),
    ] = None,
    direction: DirectionOption = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Overlay video (default: <stem>.vos.mp4).")
    ] = None,
    no_overlay: Annotated[bool, typer.Option("--no-overlay", help="Do not write the overlay video.")] = False,
    masks_dir: Annotated[Path | None, typer.Option("--masks-dir", help="Write one palette PNG per frame here.")] = None,
    mask_video: Annotated[
        Path | None, typer.Option("--mask-video", help="Write the masks as a (lossless) video.")
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    max_size: MaxSizeOption = None,
    online: OnlineOption = None,
    refine: RefineOption = None,
    k: KOption = None,
    fps: Annotated[float, typer.Option("--fps", min=0.001, help="Frame rate of a folder of frames.")] = 24.0,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
    full_precision: FullPrecisionOption = False,
    preset: PresetOption = None,
    batch: BatchOption = None,
    profile: Annotated[
        bool,
        typer.Option("--profile", help="Print seconds per frame of each stage (exact on a GPU: waits at each stage)."),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Segment the object(s) of the masks in every frame of VIDEO (frames before the first mask backwards)."""
    with reported_errors(debug):
        torch.set_num_threads(compute_threads(threads))
        # Bad arguments fail here, in a fraction of a second, not after the model has loaded.
        outputs = {"output": output, "overlay": not no_overlay, "masks_dir": masks_dir, "mask_video": mask_video}
        given = {"masks": mask or [], "masks_in": masks_in, "direction": direction.value if direction else None}
        checked = check_segment(video=video, **given, **outputs, overwrite=overwrite, fps=fps)
        torch_device = resolve_device(device)
        net = build_model(model, torch_device)
        config = session_config_for(
            net,
            **session_overrides(
                preset=preset, max_size=max_size, online=online, k=k, refine=refine, full_precision=full_precision
            ),
        )
        # The bar appears with the first frame: an error before it is printed alone.
        progress = frame_progress()
        task = progress.add_task("segment", total=None, fps=0.0)

        def on_start(total: int | None) -> None:
            progress.update(task, total=total)

        def on_frame(done: int) -> None:
            if not progress.live.is_started:
                progress.start()
            elapsed = progress.tasks[task].elapsed or 0.0
            progress.update(task, completed=done, fps=done / elapsed if elapsed > 0 else 0.0)

        try:
            result = segment_file(
                video=video,
                **given,
                model=net,
                config=config,
                device=torch_device,
                **outputs,
                overwrite=overwrite,
                fps=fps,
                on_start=on_start,
                on_frame=on_frame,
                batch=batch or default_batch(torch_device),
                overlay_preset=overlay_preset_for(preset.value if preset is not None else None),
                profile=profile,
                checked=checked,
            )
            progress.update(task, total=result.frames, completed=result.frames)
        finally:
            progress.stop()
        for note in result.notes:
            console.print(f"[yellow]Note:[/] {note}")
        frames = f"{result.frames} frame{'' if result.frames == 1 else 's'}"
        out.print(f"Segmented {frames} in {result.seconds:.1f} s ({result.fps:.1f} fps) on {torch_device}.")
        for path in result.outputs:
            out.print(f"  wrote {path}")
        if profile and result.frames:
            stages = ", ".join(f"{k} {v / result.frames:.4f}" for k, v in sorted(result.stage_seconds.items()))
            out.print(f"Seconds per frame by stage (threads overlap): {stages}.")
