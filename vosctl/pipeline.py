"""``vosctl segment`` as a function: decode -> engine -> encode, one frame at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import VosError
from engine.session import SessionConfig, VideoSession
from vosctl.encode import AtomicOutputs, VideoWriter
from vosctl.masks import fit_mask, read_mask, write_palette_png
from vosctl.palette import colourise, draw_overlay
from vosctl.video import AudioPacket, open_source


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


def default_output(video: Path) -> Path:
    """``clip.mp4`` -> ``clip.vos.mp4`` beside it (a folder of frames -> ``<folder>.vos.mp4``)."""
    video = Path(video)
    if video.is_dir():
        return video.parent / f"{video.name}.vos.mp4"
    suffix = video.suffix if video.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm", ".avi") else ".mp4"
    return video.with_name(f"{video.stem}.vos{suffix}")


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
) -> SegmentResult:
    """Segment ``video`` given the first frame's ``mask``; write the requested outputs atomically."""
    video, mask_path = Path(video), Path(mask)
    first_mask = read_mask(mask_path)
    output = Path(output) if output is not None else (default_output(video) if overlay else None)
    finals = [p.resolve() for p in (output, mask_video, masks_dir) if p is not None]
    if not finals:
        raise VosError("Nothing to write: ask for an overlay video, --masks-dir or --mask-video.")
    if video.resolve() in finals or mask_path.resolve() in finals:
        raise VosError("An output path is the input itself; choose another output.")
    result = SegmentResult(notes=list(first_mask.notes))
    outputs = AtomicOutputs(overwrite=overwrite)
    writers: list[VideoWriter] = []
    start = time.perf_counter()
    try:
        with open_source(video, fps=fps) as source:
            if on_start is not None:
                on_start(source.frame_count)
            session = VideoSession(model, config, device=device)
            palette = first_mask.palette
            overlay_writer = mask_writer = None
            masks_tmp = outputs.folder(masks_dir) if masks_dir is not None else None
            early_audio: list = []  # audio that arrives before the first frame is decoded
            for item in source.items():
                if isinstance(item, AudioPacket):
                    if overlay_writer is not None:
                        overlay_writer.write_audio(item.packet)
                    elif result.frames == 0:
                        early_audio.append(item.packet)
                    continue
                frame = item.image
                height, width = frame.shape[:2]
                if item.index == 0:
                    first_mask = fit_mask(first_mask, height, width)
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
                        )
                        writers.append(overlay_writer)
                        for packet in early_audio:
                            overlay_writer.write_audio(packet)
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
                probs = session.step(frame, first_mask.ids if item.index == 0 else None)
                ids = session.to_ids(probs)
                encode_start = time.perf_counter()
                if overlay_writer is not None:
                    overlay_writer.write(draw_overlay(frame, ids, palette), item.pts)
                if mask_writer is not None:
                    mask_writer.write(colourise(ids, palette), item.pts)
                if masks_tmp is not None:
                    write_palette_png(masks_tmp / f"{item.index:05d}.png", ids, palette)
                session.timings["encode"] += time.perf_counter() - encode_start
                result.frames += 1
                if on_frame is not None:
                    on_frame(item.index + 1)
        for writer in writers:
            writer.close()
        writers.clear()
        outputs.commit()
    except BaseException:
        for writer in writers:
            writer.abort()
        outputs.discard()
        raise
    result.seconds = time.perf_counter() - start
    result.outputs = [p for p in (output, mask_video, masks_dir) if p is not None]
    result.stage_seconds = dict(session.timings)
    return result
