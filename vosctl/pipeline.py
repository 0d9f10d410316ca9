"""``vosctl segment`` as a function: decode -> engine -> encode, frame by frame.

Three threads: decoding runs ahead (vosctl.streams.Prefetch), the engine embeds ``batch`` frames at
a time and propagates them in order, and refinement and encoding run behind it
(vosctl.streams.Worker), so that the CPU's other core or the GPU's host side is not left idle.
Outputs are written in decode order; both queues are bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.session import SessionConfig, VideoSession
from vosctl.encode import VideoWriter
from vosctl.masks import fit_mask, write_palette_png
from vosctl.outputs import AtomicOutputs, default_output
from vosctl.palette import colourise, draw_overlay
from vosctl.preflight import check_segment
from vosctl.streams import Prefetch, Worker
from vosctl.video import AudioPacket, Frame, open_source


@dataclass
class SegmentResult:
    frames: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


__all__ = ["SegmentResult", "default_output", "segment_file"]


def segment_file(
    *,
    video: Path,
    mask: Path,
    model: torch.nn.Module,
    config: SessionConfig,
    device: str | torch.device,
    output: Path | None = None,
    overlay: bool = True,
    masks_dir: Path | None = None,
    mask_video: Path | None = None,
    overwrite: bool = False,
    fps: float = 24.0,
    on_start: Callable[[int | None], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
    batch: int = 1,
    overlay_preset: str | None = None,
    encode_thread: bool = True,
) -> SegmentResult:
    """Segment ``video`` given the first frame's ``mask``; write the requested outputs atomically.

    Inputs and outputs are checked first (:func:`vosctl.preflight.check_segment`): nothing is
    written for a run that cannot succeed, and no output may replace a file vosctl did not write.
    """
    video = Path(video)
    checked = check_segment(
        video=video,
        mask=mask,
        output=output,
        overlay=overlay,
        masks_dir=masks_dir,
        mask_video=mask_video,
        overwrite=overwrite,
        fps=fps,
    )
    first_mask, plan = checked.mask, checked.plan
    output, mask_video, masks_dir = (o.path if o is not None else None for o in plan.outputs_by_kind())
    result = SegmentResult(notes=list(first_mask.notes))
    outputs = AtomicOutputs(plan)
    writers: list[VideoWriter] = []
    start = time.perf_counter()
    decoded = worker = None
    try:
        outputs.start()
        with open_source(video, fps=fps) as source:
            if on_start is not None:
                on_start(source.frame_count)
            session = VideoSession(model, config, device=device)
            palette = first_mask.palette
            overlay_writer = mask_writer = None
            masks_tmp = outputs.folder(masks_dir) if masks_dir is not None else None

            def write(item: Frame | AudioPacket, probs: torch.Tensor | None = None, given: bool = False) -> None:
                """On the encode thread, in decode order: refine (not a given mask), then every output."""
                if isinstance(item, AudioPacket):
                    if overlay_writer is not None:
                        overlay_writer.write_audio(item.packet)
                    return
                ids = session.to_ids(probs if given else session.refine(item.image, probs))
                encode_start = time.perf_counter()
                if overlay_writer is not None:
                    overlay_writer.write(draw_overlay(item.image, ids, palette), item.pts)
                if mask_writer is not None:
                    mask_writer.write(colourise(ids, palette), item.pts)
                if masks_tmp is not None:
                    write_palette_png(masks_tmp / f"{item.index:05d}.png", ids, palette)
                session.record_time("encode", encode_start)
                result.frames += 1
                if on_frame is not None:
                    on_frame(item.index + 1)

            def flush(pending: list[Frame]) -> None:
                masks = [first_mask.ids if item.index == 0 else None for item in pending]
                probs = session.step_batch([item.image for item in pending], masks, refine=False)
                for item, p, mask in zip(pending, probs, masks, strict=True):
                    worker.submit(item, p, mask is not None)
                pending.clear()

            decoded = Prefetch(source.items(), size=max(8, 2 * batch))
            worker = Worker(write, size=max(4, batch), inline=not encode_thread)
            early_audio: list[AudioPacket] = []  # audio that arrives before the first frame is decoded
            pending: list[Frame] = []
            started = False  # the first frame has arrived
            for item in decoded:
                if isinstance(item, AudioPacket):
                    if overlay_writer is not None:
                        worker.submit(item)
                    elif not started:
                        early_audio.append(item)
                    continue
                if not started:
                    started = True
                    height, width = item.image.shape[:2]
                    first_mask = fit_mask(first_mask, height, width, rotation=item.rotation)
                    result.notes = list(first_mask.notes)
                    if output is not None:
                        overlay_writer = VideoWriter(
                            outputs.file(output),
                            final_path=output,
                            width=width,
                            height=height,
                            fps=source.fps,
                            time_base=item.time_base,
                            audio_stream=source.audio,
                            preset=overlay_preset,
                        )
                        writers.append(overlay_writer)
                        for packet in early_audio:
                            worker.submit(packet)
                    early_audio.clear()
                    if mask_video is not None:
                        mask_writer = VideoWriter(
                            outputs.file(mask_video),
                            final_path=mask_video,
                            width=width,
                            height=height,
                            fps=source.fps,
                            time_base=item.time_base,
                            lossless=True,
                        )
                        writers.append(mask_writer)
                pending.append(item)
                if len(pending) >= batch:
                    flush(pending)
            if pending:
                flush(pending)
            worker.finish()
        for writer in writers:
            writer.close()
        writers.clear()
        outputs.commit()
    except BaseException:
        if worker is not None:
            worker.abort()
        if decoded is not None:
            decoded.close()
        for writer in writers:
            writer.abort()
        outputs.discard()
        raise
    finally:
        if decoded is not None:
            decoded.close()
    result.seconds = time.perf_counter() - start
    result.outputs = [p for p in (output, mask_video, masks_dir) if p is not None]
    result.stage_seconds = dict(session.timings)
    return result
