"""``vosctl segment`` as a function: decode -> engine -> encode, frame by frame.

Four threads: decoding runs ahead (vosctl.streams.Prefetch), the network embeds each frame on a
thread of its own one frame ahead (:func:`embed_ahead`; with ``batch`` > 1 the engine embeds that
many frames at a time itself), the engine propagates them in order, and refinement and encoding
run behind it (vosctl.streams.Worker), so that the CPU's other core or the GPU's host side is not
left idle. Outputs are written in decode order; every queue is bounded.

Masks may be given on any frames (vosctl.annotations). Frames before the pass's start are kept in a
temporary store as they are decoded, segmented backwards from the start (vosctl.backward) and
written out before it, so the video is decoded once and memory stays flat in its length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.between import InOrder
from engine.session import Embedded, SessionConfig, VideoSession
from vosctl.annotations import Direction
from vosctl.backward import FrameStore, run_backward
from vosctl.encode import VideoWriter
from vosctl.masks import write_palette_png
from vosctl.outputs import AtomicOutputs, default_output
from vosctl.palette import colourise, draw_overlay
from vosctl.preflight import CheckedRun, check_segment
from vosctl.streams import Background, Prefetch, Worker
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


__all__ = ["SegmentResult", "default_output", "overlay_preset_for", "segment_file"]


def overlay_preset_for(preset: str | None) -> str | None:
    """x264's speed for the overlay under a session preset: the fast preset trades file size for
    speed too (ultrafast: 2.7 instead of 4.3-4.9 ms of CPU a frame at 480p, 2.2x the file size)."""
    return "ultrafast" if preset == "fast" else None


def embed_ahead(items: Iterable, session: VideoSession, first: int, out: dict[int, Embedded]) -> Iterator:
    """``items`` as they come, each frame of the forward pass (decode index ``first`` on) embedded
    into ``out[index]`` before it is passed on. Run on its own thread (Prefetch), the network works
    on the next frame while the engine propagates this one."""
    for item in items:
        if isinstance(item, Frame) and item.index >= first:
            out[item.index] = session.embed_ahead(item.image, item.index - first)
        yield item


def _new_session(
    model: torch.nn.Module, config: SessionConfig, device: str | torch.device, profile: bool
) -> VideoSession:
    session = VideoSession(model, config, device=device, profile=profile)
    session.load_network()
    return session


def segment_file(
    *,
    video: Path,
    mask: Path | None = None,
    masks: Sequence[str | Path] = (),
    masks_in: Path | None = None,
    direction: Direction | str | None = None,
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
    profile: bool = False,
    checked: CheckedRun | None = None,
) -> SegmentResult:
    """Segment ``video`` given frame 0's ``mask`` and/or ``masks`` (``PATH`` or ``N=PATH``) and a
    ``masks_in`` folder; write the requested outputs atomically. ``direction`` (default both, when
    the first mask is not on frame 0): see :func:`vosctl.annotations.plan_passes`.

    Inputs and outputs are checked first (:func:`vosctl.preflight.check_segment`): nothing is
    written for a run that cannot succeed, and no output may replace a file vosctl did not write.
    ``checked``: that check's result for these same arguments, from a caller that made it already
    (the CLI, before loading the model), so it is not made twice.
    """
    video = Path(video)
    start = time.perf_counter()
    # The session, its network compiled or read back from the cache (import and all, ~0.1 s on a
    # 2-core CPU), is built beside the checks (where this call makes them) instead of after them;
    # the time printed counts from here.
    building = Background(lambda: _new_session(model, config, device, profile), name="vosctl-session")
    try:
        if checked is None:
            checked = check_segment(
                video=video,
                mask=mask,
                masks=masks,
                masks_in=masks_in,
                direction=direction,
                output=output,
                overlay=overlay,
                masks_dir=masks_dir,
                mask_video=mask_video,
                overwrite=overwrite,
                fps=fps,
            )
    except BaseException:
        building.wait()
        raise
    annotations, passes, plan = checked.annotations, checked.passes, checked.plan
    output, mask_video, masks_dir = (o.path if o is not None else None for o in plan.outputs_by_kind())
    result = SegmentResult(notes=list(annotations.notes))
    outputs = AtomicOutputs(plan)
    writers: list[VideoWriter] = []
    decoded = frames_in = worker = store = refiner_ready = None
    try:
        outputs.start()
        with open_source(video, fps=fps) as source:
            if on_start is not None:
                on_start(source.frame_count)
            session = building.result()
            # The refiner's network compiled beside the first frame's embedding, which the refining
            # thread would otherwise wait for before its first frame.
            refiner_ready = Background(session.load_refiner, name="vosctl-refiner")
            palette = annotations.palette
            overlay_writer = mask_writer = None
            masks_tmp = outputs.folder(masks_dir) if masks_dir is not None else None

            def write(
                item: Frame | AudioPacket, probs: torch.Tensor | None = None, given: bool = False, ids=None
            ) -> None:
                """On the encode thread, in decode order: refine (not a given mask), then every output.
                ``ids`` instead of ``probs``: a frame segmented already (backwards) or by no pass."""
                if isinstance(item, AudioPacket):
                    if overlay_writer is not None:
                        overlay_writer.write_audio(item.packet)
                    return
                if ids is None:
                    ids = session.output(item.image, probs, given)
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

            forward_masks = annotations.ids(passes.forward_masks)

            def flush(pending: list[Frame]) -> None:
                given = [forward_masks.get(item.index) for item in pending]
                ready = [embedded.pop(item.index) for item in pending] if ahead else None
                images = [item.image for item in pending]
                probs = session.step_batch(images, given, refine=False, embedded=ready, later=True)
                for item, p, mask in zip(pending, probs, given, strict=True):
                    submit(item, p, mask is not None)
                pending.clear()

            def backward(start: Frame) -> np.ndarray:
                """Segment the stored frames from ``start`` down to 0, then hand them to the writer in order."""
                back = VideoSession(model, config, device=device, profile=profile)
                start_ids = run_backward(back, store, start, annotations.ids(passes.backward_masks), batch=batch)
                for stage, seconds in back.timings.items():
                    session.timings[stage] += seconds
                for index in range(start.index):
                    submit(store.frame(index), None, True, store.ids(index))
                store.close()
                return start_ids

            def background(item: Frame) -> np.ndarray:
                return np.zeros(item.image.shape[:2], np.uint8)

            def open_writer(path: Path, first: Frame, **options) -> VideoWriter:
                """A writer for the video output ``path`` (into its temporary file) at ``first``'s size
                and time base and the source's rate; ``writers`` closes or aborts it with the others."""
                height, width = first.image.shape[:2]
                writer = VideoWriter(
                    outputs.file(path),
                    final_path=path,
                    width=width,
                    height=height,
                    fps=source.fps,
                    time_base=first.time_base,
                    **options,
                )
                writers.append(writer)
                return writer

            if passes.backward_from is not None:
                store = FrameStore()
            frames_seen = 0
            decoded = frames_in = Prefetch(source.items(), size=max(8, 2 * batch))
            # The network on a thread of its own, a frame ahead of retrieval (single frames, every
            # frame a key frame or the frames the schedule carries skipped): README, fourteenth round.
            embedded: dict[int, Embedded] = {}
            ahead = encode_thread and batch == 1 and session.embeds_ahead and passes.forward_from is not None
            if ahead:
                frames = embed_ahead(frames_in, session, passes.forward_from, embedded)
                decoded = Prefetch(frames, size=2, name="vosctl-embed")
            worker = Worker(write, size=max(4, batch), inline=not encode_thread)
            # Refined and encoded in decode order, a carried frame once the next key frame is stepped
            # (engine.between): ``submit`` hands the worker each job whose turn has come.
            in_order = InOrder(session)

            def hand_on(jobs) -> None:
                for job in jobs:
                    worker.submit(*job)

            def submit(*job) -> None:
                in_order.add(job, job[1] if len(job) > 1 else None)
                hand_on(in_order.ready())

            try:
                early_audio: list[AudioPacket] = []  # audio that arrives before the first frame is decoded
                pending: list[Frame] = []
                started = False  # the first frame has arrived
                for item in decoded:
                    if isinstance(item, AudioPacket):
                        if overlay_writer is not None:
                            submit(item)
                        elif not started:
                            early_audio.append(item)
                        continue
                    if not started:
                        started = True
                        height, width = item.image.shape[:2]
                        annotations = annotations.fitted(height, width, rotation=item.rotation)
                        forward_masks = annotations.ids(passes.forward_masks)
                        result.notes = list(annotations.notes)
                        if output is not None:
                            overlay_writer = open_writer(output, item, audio_stream=source.audio, preset=overlay_preset)
                            for packet in early_audio:
                                submit(packet)
                        early_audio.clear()
                        if mask_video is not None:
                            mask_writer = open_writer(mask_video, item, lossless=True)
                    frames_seen += 1
                    back_from, forward_from = passes.backward_from, passes.forward_from
                    if back_from is not None and item.index < back_from:
                        store.put(item)
                        continue
                    start_ids = backward(item) if back_from is not None and item.index == back_from else None
                    if forward_from is not None and item.index >= forward_from:
                        pending.append(item)
                        if len(pending) >= batch:
                            flush(pending)
                    elif start_ids is not None:
                        submit(item, None, True, start_ids)
                    else:  # no pass reaches this frame (--direction forward or backward)
                        submit(item, None, True, background(item))
                if pending:
                    flush(pending)
                hand_on(in_order.finish())  # the last carried frame has no key frame after it
                # A mask for a frame beyond the end: known only now when the container did not count its frames.
                annotations.check_length(frames_seen)
                worker.finish()
            except BaseException:
                # Both threads stop before the source closes: they read its frames and packets
                # (closing the input under a decoding thread crashed the process on Ctrl-C).
                worker.abort()
                session.stop_waiting()  # the network's thread may be waiting for a frame's box
                decoded.close()
                frames_in.close()
                raise
        for writer in writers:
            writer.close()
        writers.clear()
        outputs.commit()
    except BaseException:
        building.wait()
        if worker is not None:
            worker.abort()
        for stream in (decoded, frames_in):
            if stream is not None:
                stream.close()
        for writer in writers:
            writer.abort()
        outputs.discard()
        raise
    finally:
        for stream in (decoded, frames_in):
            if stream is not None:
                stream.close()
        if store is not None:
            store.close()
        if refiner_ready is not None:
            refiner_ready.wait()  # an error of its own is the refining thread's to raise
    result.seconds = time.perf_counter() - start
    result.outputs = [p for p in (output, mask_video, masks_dir) if p is not None]
    result.stage_seconds = dict(session.timings)
    return result
