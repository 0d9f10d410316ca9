"""One video, streamed: ``VideoSession.step(frame, mask=None) -> probabilities``.

The session only wires the stages together and times them: embed (engine.embedder: stateless,
runs ahead in batches, or on another thread: ``embed_ahead``), propagate (engine.propagation:
bank, memory, prior; the only sequential state) and refine (engine.refine_stage: the refiners of
engine.refiners, or for a frame carried whole the last output moved along the flow). Frames enter at
any size; probabilities leave at the frame's full size. The engine never opens a file; decoding,
encoding and progress bars stay outside.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.ahead import AheadEmbedder, Embedded, check_embedded
from engine.between import Between
from engine.bilateral_refiner import BilateralRefiner
from engine.config import ALIGN, REFINERS, SessionConfig
from engine.edge_snap import EdgeSnap
from engine.embedder import FrameEmbedder, check_frame, processing_size
from engine.errors import VosError
from engine.memory import PixelSet
from engine.model import OUTPUT_STRIDE, TIME_HORIZON, EmbeddingModel
from engine.objects import channel_argmax, merge_annotation, object_ids
from engine.presets import session_config_for
from engine.propagation import Propagator
from engine.refine_stage import CarriedFrame, CarriedProbs, RefineStage
from engine.refiners import load_refiner_network, session_refiners
from engine.thin_parts import ThinParts
from engine.window import Box, FrameSchedule

__all__ = [
    "ALIGN",
    "REFINERS",
    "CarriedFrame",
    "CarriedProbs",
    "Embedded",
    "SessionConfig",
    "VideoSession",
    "channel_argmax",
    "processing_size",
    "session_config_for",
]


class VideoSession:
    """Segments one video frame by frame. Create one per video.

    ``profile=True`` waits for the device after each stage so that ``timings`` are exact per
    stage; otherwise a GPU runs ahead and only the totals are meaningful.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        config: SessionConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        refiner=None,
        profile: bool = False,
    ) -> None:
        self.config = config or SessionConfig()
        self.device = torch.device(device)
        self.embedder = FrameEmbedder(
            model,
            max_size=self.config.max_size,
            min_size=self.config.min_size,
            device=self.device,
            half=self.config.half,
            runtime=self.config.runtime,
        )
        self.propagator = Propagator(self.config, self.device)
        # On a GPU the refiner solves on the device (engine.refiners), so probabilities reach the
        # host once, as the ids the outputs need.
        carried = None  # the carried frames' refiner: the same
        if refiner is None:
            refiner, carried = session_refiners(self.config, self.device)
        self.refiner = refiner
        thin = ThinParts() if self.config.thin_parts else None
        self._stage = RefineStage(refiner, carried, thin, EdgeSnap() if self.config.edge_snap else None)
        self._given: torch.Tensor | None = None  # the last frame's output when it was given a mask
        # The carried frame waiting for the next key frame (engine.between), for callers stepping ``later``.
        between = self.config.carry_between and not self.config.carry_refined
        self._between = Between(self._to_refiner) if between else None
        self.profile = profile
        self.frame_index = 0
        self.frame_size: tuple[int, int] | None = None
        # What the network sees of each coming frame (engine.window): whether it sees the frame,
        # and the box. On a GPU the network is cheap and embeds frames in batches: every frame, whole.
        self.schedule = FrameSchedule(self.config, enabled=self.device.type == "cpu")
        self._ahead = AheadEmbedder(self.embedder.prepare, self._embed, self.schedule)
        self.whole_again = 0  # key frames embedded again whole: their box missed a cell retrieval needed
        self.carried = 0  # frames carried along the flow, not seen by the network
        self.timings: dict[str, float] = defaultdict(float)
        self._timing_lock = threading.Lock()

    @property
    def registry(self):
        return self.propagator.registry

    @property
    def bank(self):
        return self.propagator.bank

    @property
    def memory(self):
        return self.propagator.memory

    def record_time(self, stage: str, start: float) -> float:
        """Add the time since ``start`` to ``timings[stage]`` (thread-safe); returns now."""
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        with self._timing_lock:
            self.timings[stage] += now - start
        return now

    def _check(self, frame: np.ndarray, mask: np.ndarray | None, index: int) -> None:
        check_frame(frame)
        height, width = frame.shape[:2]
        if self.frame_size is None:
            self.frame_size = (height, width)
        elif self.frame_size != (height, width):
            raise VosError(
                f"Frame {index} is {width}x{height}, but the video started at "
                f"{self.frame_size[1]}x{self.frame_size[0]}."
            )
        if mask is not None and mask.shape != self.frame_size:
            raise VosError(
                f"The mask is {mask.shape[1]}x{mask.shape[0]} but the frame is "
                f"{self.frame_size[1]}x{self.frame_size[0]}."
            )

    # ---- the streaming calls -------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> torch.Tensor:
        """Segment one frame. frame (H, W, 3) uint8 RGB; mask (H, W) object ids or None.

        Returns probabilities (K + 1, H, W) float32 on the CPU: background, then one channel per
        object in registry order. A frame with a mask returns that mask as probabilities.

        A mask may come on any frame. The first one starts the video. On a later frame, an id not
        seen before is a new object from that frame on (absent before it, the YouTube-VOS
        protocol); the ids it holds replace their prediction on that frame while the objects it
        does not mention keep theirs (engine.objects.merge_annotation); that merged mask is
        returned and joins the reference bank beside the earlier annotations (engine.memory.ReferenceBank
        says how the bank stays bounded). To segment backwards from an annotated frame, give a
        new session the frames in reverse order, the annotated one first.
        """
        return self.step_batch([frame], [mask])[0]

    def load_network(self) -> None:
        """Compile the network now, not at the first frame: a caller that builds the session on
        another thread while it reads its inputs (vosctl.pipeline) takes it off the first frame's way."""
        self.embedder.load()

    def load_refiner(self) -> None:
        """Compile the refiner's network now, not at the first frame it refines: a caller with a
        core free while the first frame is embedded (vosctl.pipeline) takes it off the way of the
        thread that refines (engine.refiners.load_refiner_network). Safe beside :meth:`refine`."""
        load_refiner_network(self.refiner)

    def embed_ahead(self, frame: np.ndarray, position: int) -> Embedded:
        """Embed the frame :meth:`step_batch` will see as the session's ``position``-th (its
        ``frame_index`` then), on another thread while this session propagates the frames before
        it: the network no longer waits for retrieval, nor retrieval for the network. Safe beside
        :meth:`step_batch` on one other thread; only where the schedule decides which frames the
        network sees (:meth:`embeds_ahead`). With a schedule (engine.window) it waits until the frame
        two before ``position`` is stepped, so the stepping thread must not wait for this embedding
        before that; a stepping thread that stops early calls :meth:`stop_waiting`. A frame the plan
        carries is not embedded (``pixels`` None)."""
        return self._ahead.embed(frame, position)

    @property
    def embeds_ahead(self) -> bool:
        """Whether :meth:`embed_ahead` may embed this session's frames: every frame is a key frame,
        or the schedule decides which are (``carry_motion``); not with a fixed key-frame interval."""
        return not self.config.fixed_interval

    def stop_waiting(self) -> None:
        """Let a thread in :meth:`embed_ahead` go on without waiting for its plan, and a refining
        thread without waiting for a carried frame's next key frame (the stepping thread has stopped)."""
        self.schedule.stop_waiting()
        self.finish()

    def finish(self) -> None:
        """No frame follows (``step_batch(later=True)``): a carried frame waiting for the next key
        frame takes the key frame before alone."""
        if self._between is not None:
            self._between.resolve()

    @torch.inference_mode()
    def step_batch(
        self,
        frames: Sequence[np.ndarray],
        masks: Sequence[np.ndarray | None] | None = None,
        *,
        refine: bool = True,
        embedded: Sequence[Embedded] | None = None,
        later: bool = False,
    ) -> list[torch.Tensor]:
        """:meth:`step` for consecutive frames: the key frames among them are embedded in one batch,
        then each frame is propagated in order. The results equal those of :meth:`step` frame by
        frame up to the rounding of the network's batched arithmetic. ``refine=False`` leaves the
        refinement to the caller (:meth:`refine`, in frame order, for example on another thread), and
        the probabilities on the refiner's device (the GPU with the torch solver), or a
        :class:`CarriedProbs` for a frame carried at the grid, or a :class:`CarriedFrame` for one
        carried whole (``carry_refined``); a frame given a mask returns that mask and is not
        refined. A 0/255 mask is object 1 (engine.objects.object_ids), as in the CLI.
        ``embedded``: the frames' embeddings from :meth:`embed_ahead`, one per frame, in place of
        embedding them here. ``later`` (with ``refine=False``): the caller refines in frame order
        after stepping on (another thread, engine.between's ``InOrder``), so a frame carried between
        two key frames may wait for the second (``carry_between``); call :meth:`finish` after the
        last frame."""
        if later and refine:
            raise VosError("step_batch(later=True) is for a caller that refines the frames itself (refine=False).")
        masks = [object_ids(m) if m is not None else None for m in masks] if masks is not None else [None] * len(frames)
        if len(masks) != len(frames):
            raise VosError("step_batch needs one mask (or None) per frame.")
        start = time.perf_counter()
        for offset, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            self._check(frame, mask, self.frame_index + offset)
        if embedded is not None:
            self._check_embedded(embedded, len(frames))
        keys = self.schedule.batch_keys([mask is not None for mask in masks])
        boxes: dict[int, Box | None] = {}
        if embedded is not None:
            smalls = [item.small for item in embedded]
            seen = [i for i, item in enumerate(embedded) if item.pixels is not None]
            boxes = {i: embedded[i].box for i in seen}
            embedded = {i: embedded[i].pixels for i in seen}
        else:
            smalls = [self.embedder.prepare(frame) for frame in frames]
            # With a schedule (engine.window) a key frame is embedded in the loop, once its plan is known.
            batched = [] if self.schedule.enabled else keys
            times = [(self.frame_index + i) / TIME_HORIZON for i in batched]
            pixels = self.embedder.embed([smalls[i] for i in batched], times) if batched else []
            embedded = dict(zip(batched, pixels, strict=True))
            start = self.record_time("embed", start)
        h, w = smalls[0].shape[:2]
        grid = (h // OUTPUT_STRIDE, w // OUTPUT_STRIDE)
        results = []
        for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            flow = self.propagator.motion(smalls[i], grid)
            start = self.record_time("flow", start)
            key = self.schedule.sees(self.frame_index, mask is not None, i in keys)
            if key:
                pixels, box = self._key_pixels(smalls[i], embedded.get(i), boxes.get(i), mask is not None)
                start = time.perf_counter()
            if mask is not None:
                self.finish()  # a carried frame still waiting takes the key frame before alone
                if self.propagator.started:
                    mask = self._merge_with_prediction(frame, pixels, mask, grid, flow)
                    start = self.record_time("retrieve", start)
                results.append(self.propagator.reference(pixels, mask.astype(np.uint8), grid))
                self._given = results[-1]
                if refine:
                    self._stage.given(frame, self._given)
                self._frame_done(flow)
                continue
            if key:
                coarse = self.propagator.propagate(pixels, grid, flow, box=box)
                if coarse is None:  # the box misses a cell the gate lets retrieval query
                    self.whole_again += 1
                    pixels = self._embed(smalls[i], self.frame_index, None)
                    start = time.perf_counter()
                    coarse = self.propagator.propagate(pixels, grid, flow)
                start = self.record_time("retrieve", start)
            else:
                coarse = self.propagator.carry(flow)
                self.carried += 1
                start = self.record_time("carry", start)
            if key and self._between is not None:
                self._between.resolve(coarse, flow)  # the carried frame before this one, if it waits
            whole = None if key or not self.config.carry_refined else self.propagator.pixel_flow
            if whole is not None:  # the last output moved along the flow, not refined again
                output = CarriedFrame(whole, self._given)
            elif not key and later and self._between is not None:
                output = CarriedProbs(self._between.hold(coarse.clone()))
            else:
                output = self._to_refiner(coarse)
                if not key:
                    output = CarriedProbs(output)
            start = self.record_time("upsample", start)
            results.append(self.refine(frame, output).cpu() if refine else output)
            self._given = None
            start = time.perf_counter()
            self._frame_done(flow)
        return results

    def _key_pixels(
        self, small: np.ndarray, given: PixelSet | None, box: Box | None, annotated: bool
    ) -> tuple[PixelSet, Box | None]:
        """The pixels of the key frame at ``frame_index`` and the box they hold keys in (None: all):
        ``given`` (embedded ahead in ``box``) or embedded now, in the box decided for it
        (engine.window). An annotated frame, whose every cell counts, is embedded again whole;
        :meth:`step_batch` does the same for a box that misses a cell retrieval queries."""
        position = self.frame_index
        if given is None:
            box = None if annotated else self.schedule.plan_for(position).box
            given = self._embed(small, position, box)
        if box is not None and annotated:
            self.whole_again += 1
            return self._embed(small, position, None), None
        return given, box

    def _embed(self, small: np.ndarray, position: int, box: Box | None) -> PixelSet:
        start = time.perf_counter()
        pixels = self.embedder.embed([small], [position / TIME_HORIZON], box)[0]
        self.record_time("embed", start)
        return pixels

    def _frame_done(self, flow: torch.Tensor | None) -> None:
        """The frame at ``frame_index`` is propagated (``flow``: the optical flow into it): the plan
        of the frame two on follows from it."""
        self.schedule.frame_done(self.frame_index, self.propagator.previous, flow)
        self.frame_index += 1

    def _merge_with_prediction(
        self, frame: np.ndarray, pixels, mask: np.ndarray, grid: tuple[int, int], flow: torch.Tensor | None
    ) -> np.ndarray:
        """A mask on a frame after the first: the objects it holds replace their prediction there,
        the others keep theirs (engine.objects.merge_annotation) -> (H, W) uint8 ids."""
        full = self._to_refiner(self.propagator.propagate(pixels, grid, flow, remember=False))
        # The refiner and the snap alone: the stage's last output and thin parts are for the thread
        # refining in frame order.
        start = time.perf_counter()
        predicted = self.to_ids(self._stage.refine(frame, full))
        self.record_time("refine", start)
        return merge_annotation(predicted, mask)

    def _check_embedded(self, embedded: Sequence[Embedded], count: int) -> None:
        """Embeddings given to :meth:`step_batch`: only where the schedule decides the key frames
        (engine.ahead.check_embedded checks the rest)."""
        if not self.embeds_ahead:
            raise VosError("Frames embedded ahead need keyframe_interval 1, or frames carried by carry_motion.")
        check_embedded(embedded, self.frame_index, count)

    def _to_refiner(self, coarse: torch.Tensor) -> torch.Tensor:
        """(K + 1, gh, gw) grid probabilities -> upsampled to the frame, where the refiner works."""
        full = F.interpolate(coarse[None], size=self.frame_size, mode="bilinear", align_corners=False)[0]
        return self._for_refiner(full.float())

    def _for_refiner(self, probs: torch.Tensor) -> torch.Tensor:
        """Probabilities where the refiner works: the device for the torch solver, else the CPU."""
        if self.refiner is None or self.device.type == "cpu" or isinstance(self.refiner, BilateralRefiner):
            return probs.cpu()
        return probs

    def refine(self, frame: np.ndarray, probs: torch.Tensor | CarriedProbs | CarriedFrame) -> torch.Tensor:
        """(K + 1, H, W) probabilities -> refined (the configured refiner; unchanged without one); a
        :class:`CarriedProbs` -> refined by the carried frames' refiner (``carried_bilateral``); a
        :class:`CarriedFrame` -> the last output moved along its flow (engine.refine_stage). Call it
        in frame order for every frame :meth:`step_batch` gave with ``refine=False``, except those
        given a mask; one thread at a time."""
        start = time.perf_counter()
        carried = isinstance(probs, CarriedFrame)
        refined = self._stage(frame, probs)
        self.record_time("carry" if carried else "refine", start)
        return refined

    def output(self, frame: np.ndarray, probs, given: bool) -> np.ndarray:
        """A frame :meth:`step_batch` gave with ``refine=False`` -> its (H, W) uint8 mask of user ids:
        refined (:meth:`refine`), or, for a frame given a mask, that mask, which the refine stage
        follows thin parts from. In frame order for every frame; one thread at a time."""
        if given:
            self._stage.given(frame, probs)
            return self.to_ids(probs)
        return self.to_ids(self.refine(frame, probs))

    def to_ids(self, probs: torch.Tensor) -> np.ndarray:
        """(K + 1, H, W) probabilities -> (H, W) uint8 mask of user object ids."""
        return self.registry.to_ids(channel_argmax(probs).cpu().numpy())
