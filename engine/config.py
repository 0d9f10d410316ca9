"""The settings of a video session: one frozen dataclass, overridable by name (``--set``, model files).

Named trades of these settings (``--preset``) are engine.presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.errors import VosError
from engine.retrieval import RetrievalConfig
from engine.runtime import RUNTIMES

REFINERS = ("none", "bilateral", "learned", "learned+bilateral")
ALIGN = 32  # the backbone's coarsest stride: inner functions see multiples of it


@dataclass(frozen=True)
class SessionConfig:
    # Longer side of the image the network sees: the stride-8 grid limits how thin a part can be
    # found. On the dev split 640 beat 512 (trained head, two held-out seeds: J 0.807 -> 0.819); over
    # the 30 training sequences (five-fold cross-validation, benchmarks/cross_validate.py) 768 beat
    # 640 on 27 sequences of 30 (J 0.830 -> 0.839, F 0.833 -> 0.849) at 3.6 instead of 5.3 fps on
    # 2 cores (480p input); 896 was no better (J 0.841, F 0.849) and lost fast-moving objects.
    # 640 since the twenty-ninth round, with every other frame carried (``keyframe_interval``): the
    # speed issue's trade (PRESETS above). 768 is the "accurate" preset's.
    max_size: int = 640
    # Frames whose longer side is below ``min_size`` are enlarged to it (at most to ``max_size``)
    # before the network, so a small clip's objects cover enough grid cells: on the 20 multi-object
    # dev clips (432x240, benchmarks/multi_object_dev.py) mean J per object 0.625 -> 0.652, F 0.652
    # -> 0.713 (46 objects better, 12 worse). Frames of 640 pixels and more are not affected.
    min_size: int = 640
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    online: bool = True
    # A small memory of recent frames beat larger ones on the dev split (J&F 0.749 at 1024 pixels,
    # 0.742 at 2048, 0.726 at 4096) and keeps retrieval cheap.
    memory_size: int = 1024  # pixels in the online memory (8 frames of 128)
    memory_threshold: float = 0.95  # a pixel joins the memory when its top probability reaches this
    memory_per_frame: int = 128  # at most this many pixels join per frame
    # With several objects, how the objects share a frame's pixels (engine.memory.memory_quotas):
    # as their confident cells' counts to this power. 1 draws the cells at random, so a large
    # object fills the memory with its pixels and a small look-alike beside it gets few, and
    # retrieval then gives it to the large one. Multi-object dev clips through H.264, mean J per
    # object, the memory of one object's size, seeds 0 / 1, against 1: 0.5 twins +1.7 / +1.8, same
    # kind +0.9 / -0.1, the 40 crowd clips +0.5 / +0.4; 0 (the same each) twins +2.7 / +3.3, same
    # kind +1.0 / +0.1, crowds +0.0 (seed 0). No effect with one object. README, thirty-eighth round.
    memory_object_power: float = 0.5
    # With K objects the memory holds min(K, ``memory_objects``) times ``memory_size`` pixels, and
    # as many times ``memory_per_frame`` join a frame: each object keeps about as many pixels as a
    # single one does. With the shares above, against the thirty-seventh round's memory, seeds 0 /
    # 1: twins +3.2 / +3.6, same kind +1.1 / +1.6, the 40 crowd clips +2.6 / +3.0; the memory
    # scaled alone (seed 0) +1.4, +1.1, +1.0. Twice (seed 0): crowd +2.1, twins +1.0; five times:
    # the first crowd set +3.9, the third +1.3 (three times +2.8, +1.7). The same memory for one
    # object as well changed CV J&F by -0.06 / +0.10. README, thirty-eighth round.
    memory_objects: int = 3
    # "bilateral": the bilateral solver; "learned": the learned boundary refiner (engine.mask_refiner,
    # ``refiner_file`` or the shipped one); "learned+bilateral": the learned refiner, then the solver.
    # Five-fold cross-validation over the 30 training sequences, the same coarse probabilities
    # refined both ways (benchmarks/tune_refine.py, fold refiners trained without the fold):
    # learned+bilateral J 0.871 / F 0.863 against 0.858 / 0.858 for the solver alone (27 sequences
    # better, 3 worse); multi-object dev clips 0.643 -> 0.659 mean J per object. The refinement
    # thread absorbs its cost (bear at 480p: 0.140 against 0.146 s a frame). README, tenth round.
    refine: str = "learned+bilateral"
    refiner_file: str | None = None  # a refiner file from `vosctl train-refiner`; None: the shipped one
    # The bilateral solver's working resolution (longer side, 0: the frame's own; the learned
    # refiner's too until the thirty-third round: ``learned_size`` below) and its smoothness
    # weight (engine.bilateral_params.BilateralParams ``max_side`` and ``lam``), solved only on the
    # window around the uncertain pixels (``refine_crop``, the CPU solver) at the resolution
    # ``refine_size`` gives the whole frame. Five-fold cross-validation over the 30 training
    # sequences (benchmarks/tune_refine.py): J 0.845 -> 0.857, F 0.846 -> 0.853 against 256 and
    # 128 (28 sequences better, 2 worse); the window keeps the cost of the old whole-frame solve
    # (bear at 480p: refine 0.056 against 0.068 s a frame).
    refine_size: int = 512
    # The learned refiner works at the resolution that makes the frame's longer side ``learned_size``
    # (0: the frame's own size; the solver keeps ``refine_size``). 512 until the thirty-third round,
    # chosen on the 768 grid. On the 640 grid of the defaults, CV J&F (seeds 0 / 1) against 512:
    # 576 +0.15 / +0.13 (23 / 7 sequences better / worse with each), 640 +0.24 / +0.20 (23 / 7, 22 /
    # 8; the solver at 640 too +0.03 more); over the 30 sequences as mp4, interleaved, fps printed
    # float32 20.71 -> 20.65 at 576, 21.43 -> 20.83 at 640; bfloat16 27.61 -> 26.15 at 576, 24.52 at
    # 640 (the learned refiner runs in float32 in both). 576 is the default; ``accurate`` takes 640.
    # README, thirty-third round.
    learned_size: int = 576
    # A frame whose longer side is below ``learned_size`` is enlarged for the learned refiner at most
    # this many times towards it (1: refined at its own size). Against 1 on the 432x240 multi-object
    # dev clips, through H.264, seeds 0 / 1: twins +0.22 / +0.07 mean J per object, same kind +0.06 /
    # -0.04, the 40 crowd clips +0.06 / +0.10 (objects better / worse 52 / 39 and 52 / 35), for the
    # five-object clips at 432x240 running 13.46 -> 16.94 fps printed in bfloat16 and 9.86 -> 12.10
    # in float32 without it (+26% / +23%, every clip faster). Frames of ``learned_size`` and more
    # are not affected. "fast" refines a small frame at its own size. README, thirty-ninth round.
    learned_enlarge: float = 2.0
    refine_lambda: float = 512.0
    refine_crop: bool = True
    # Of that window the CPU solver's grid holds only the pixels within ``refine_band`` pixels (of
    # the frame) of an uncertain one; the others, confident and away from any boundary, keep their
    # probabilities (0: the whole window). The solver on train's frames 24 -> 13 ms a frame on one
    # core (bear 11.4 -> 6.2); CV J&F -0.02 / -0.02 (seeds 0 / 2; labels of 7-36 pixels a frame
    # change); the 30 training sequences through `vosctl segment`, float32, 2 cores: 19.32 -> 19.93
    # fps printed (20 clips faster, 3 slower). 8 pixels: CV -0.05 / -0.04. README, twenty-seventh round.
    refine_band: float = 16.0
    # The solver's conjugate-gradient iterations (BilateralParams ``iterations``; it stops earlier at
    # a relative residual of 1e-5, which at 512 it never reached in 25). Only the argmax of its
    # result is used: on the same coarse probabilities of the 30 cross-validation sequences, J&F
    # 0.8729 with 25, 0.8724 with 12, 0.8717 with 8; the solver's time on bear 0.019 -> 0.014 s a
    # frame on one core at 12 (README, thirteenth round).
    refine_iterations: int = 12
    # Temporal prior: an object is expected within ``prior_radius`` grid cells of where it was in
    # the previous frame, moved along the optical flow (``prior_flow``, engine.motion); elsewhere
    # its probability is scaled by ``prior_floor`` (1.0 disables). The k-NN votes are sharp (a
    # look-alike far away often gets 0.99), so the floor must be low to hold: with 0.1 a passer-by
    # in front of the camera took over bmx-bumps. An object whose highest probability in the
    # previous frame is below ``prior_lost`` is lost: the prior lets go of it, so retrieval anywhere
    # in the frame can find it again (sparsely in settled background: ``interior_stride``).
    # Five-fold cross-validation over the 30 training sequences (benchmarks/cross_validate.py):
    # J 0.827 -> 0.830, F 0.827 -> 0.833 against radius 4 and floor 0.1 alone (13 sequences up, 5
    # down).
    prior_radius: int = 4
    prior_floor: float = 0.01
    prior_flow: bool = True
    prior_lost: float = 0.5
    # Keys projected onto the top principal directions of the frames that introduced objects
    # (refitted on each such frame; only the cells the gate retrieves are projected): retrieval's
    # product is linear in the dimension. The shipped model's keys have 600 (128 learned, 472
    # untrained). Five-fold cross-validation over the 30 training sequences, J / F: 600 0.858 /
    # 0.853, 256 0.859 / 0.858 (18 sequences better, 12 worse), 192 0.853 / 0.850, 128 0.848 /
    # 0.848; bear at 480p, interleaved: 0.53 -> 0.43 s a frame at 256. An object first given on a
    # later frame (half of a training object, 432x240, 4 sequences): its J 0.360 with the first
    # frame's directions only, 0.461 refitted, 0.480 with all 600. README, Projected keys are the default (ninth round).
    project_dim: int | None = 256  # None or 0: the keys as the model gives them
    # The reference bank keeps every object cell of an annotated frame and the background within
    # ``bank_band`` cells of an object; of the background beyond, one cell in ``bank_stride`` along
    # each axis (1: every cell). Retrieval's product is linear in the bank's size: bear at 480p,
    # retrieval 0.067 -> 0.040 s a frame (float32, 2 cores). Five-fold cross-validation over the 30
    # training sequences, J&F, two seeds of fold models: 0.870 -> 0.875 and 0.865 -> 0.862 (17 / 13
    # and 10 / 20 sequences better / worse); stride 3 lost 1.6 points. README, twelfth round.
    bank_stride: int = 2
    bank_band: int = 2
    # A small object is lost at once when the bank holds only the cells it fills most of: the crowd
    # dev clips' objects of 110-370 pixels at 432x240 have 2-9 such cells on the 80x44 grid, and k
    # nearest neighbours of 5 outvote them. An object of fewer than ``small_object_cells`` such cells
    # also labels, in the bank, every cell it fills at least ``small_object_fraction`` of and more
    # than any other object does (0: off). Mean J per object on the multi-object dev clips through
    # H.264, seeds 0 / 1: twins +0.20 / +0.75, crowd +0.93 / +0.71 (objects better / worse 20 / 10,
    # 17 / 10); CV J&F +0.02 / +0.04 (only motocross-bumps changes). 96 cells: CV -0.21 (objects of
    # 48-96 cells lose to their mixed boundary cells). README, thirty-fourth round.
    small_object_cells: int = 48
    small_object_fraction: float = 0.25
    # Reduced precision where the hardware runs it natively (engine.devices.reduced_precision):
    # float16 on CUDA, bfloat16 on CPUs with AVX512-BF16/AMX; float32 elsewhere or when False. The
    # learned refiner's network compiled by OpenVINO follows it (engine.refiner_runtime).
    half: bool = True
    # How the network runs: "openvino" (a CPU, float32 or bfloat16; engine.openvino_runtime),
    # "onnx" (ONNX Runtime; float32 on a CPU only), "torch", or "auto": openvino on a CPU where it
    # is installed, else onnx for float32 on a CPU, else torch (engine.runtime.resolve_runtime).
    # All compute the same embedding up to float32 rounding (bfloat16's in bfloat16). The learned
    # refiner's network follows it to OpenVINO on a CPU (in bfloat16 with ``half`` where the CPU has
    # it; engine.refiner_runtime), else runs in torch (float32).
    runtime: str = "auto"
    # Retrieve labels only for the grid cells the temporal prior lets an object reach (within
    # ``prior_radius`` of where an object was, moved along the flow, or anywhere for a lost one);
    # the others are background. Off: every cell is retrieved and the prior scales the far ones by
    # ``prior_floor``, which a look-alike's near-certain vote can still beat. Retrieval at 768 on
    # bear: 0.47 -> 0.13 s a frame (2 cores). Cross-validation: README, Speed (sixth round).
    prior_gate: bool = True
    # Grid cells beyond the prior's reach that the gate still retrieves (their objects damped by
    # the floor as without the gate), so a large object entering the frame can grow into them:
    # with no margin the gate lost bus (J 0.893 -> 0.712) on the cross-validation; with 4, the
    # folds 0-3 score J 0.841 / F 0.837 against 0.833 / 0.832 without any gate. 3 since the
    # twenty-sixth round, with ``interior_stride`` 3 (the network's box shrinks with the margin too):
    # below.
    gate_margin: int = 3
    # Settled cells (engine.interior: the previous frame, moved along the flow, gave the cell and
    # every cell within ``interior_band`` one label, each at least ``interior_level`` sure) are
    # retrieved one in ``interior_stride`` along each axis; the others copy their block's retrieved
    # cell, and the blocks around one whose retrieved cell changed are retrieved after all. 1: every
    # cell is retrieved. Bear at 480p: 1,900 -> 870 query cells, retrieval 0.050 -> 0.023 s a frame
    # on one core. Five-fold cross-validation, J&F, two seeds of fold models: 0.872 -> 0.873 and
    # 0.865 -> 0.874 (12 / 18 and 15 / 15 sequences better / worse), with the eleventh round's
    # fold models 0.875 -> 0.871 and 0.862 -> 0.862; band 2 lost 0.3-0.6 with the memory drawn
    # from the retrieved cells only. README, thirteenth round.
    # Stride 3 with ``gate_margin`` 3 (was 2 and 4): CV J&F on the H.264 copy, seeds 0 / 1 / 2, +0.17
    # / +0.21 / -0.37 (19 / 9, 17 / 11, 9 / 17 sequences better / worse); multi-object dev clips,
    # mean J per object, twins -0.06, same kind -0.50, the 40 crowd clips +0.8; the 30 training
    # sequences as mp4 through `vosctl segment`, float32, 2 cores: 17.56 -> 18.55 fps printed (24
    # clips faster, 1 slower). Each alone: +3.0-4.5% fps, CV -0.09 and -0.08 on average over the
    # seeds. README, twenty-sixth round.
    # Sparse while an object is lost too (it comes back at a block's retrieved cell, and the blocks
    # around are redone), not every cell: on the six five-object clips through `vosctl segment` the
    # float32 fps printed +7% / +10% (two interleaved runs; a clip with objects lost on 27 of 29 key
    # frames +43% / +63%), bfloat16 +1%; multi-object dev clips within +-0.5 J per object on every
    # set with seeds 0 and 1; CV J&F +0.00 / +0.03 (only bmx-bumps changes). README, thirty-ninth round.
    interior_stride: int = 3
    interior_level: float = 0.9
    interior_band: int = 1
    # Identities of several objects (engine.propagation, ``_apply_identity``): the objects' share
    # of a cell is redistributed by how much of it each held in the previous frame (moved along the
    # flow), to the power ``identity_power`` (0: off); ``identity_floor`` keeps a cell that no
    # object held open to all. No effect with a single object.
    identity_power: float = 1.0
    identity_floor: float = 0.05
    # With several objects, the reference bank's object pixels are ranked by position (the model's
    # ``spatial_weight``) as if each had moved with its object since its annotated frame
    # (engine.follow): an object now where another was annotated is not pulled to the other's
    # pixels. Multi-object dev clips through H.264, mean J per object, seeds 0 / 1: twins +0.43 /
    # +0.55, same kind -0.09 / +1.79, the 40 crowd clips +0.72 / +0.82 (objects better / worse 103 /
    # 87, 110 / 85); seed 0 drawn again (two threads) +0.18, +1.02, +0.89. No effect with one object:
    # following it too changed CV J&F by -0.04 / -0.15. README, fortieth round.
    follow_objects: bool = True
    # Run the network and retrieval on every n-th frame at least (1: every frame); the frames
    # between take the last key frame's probabilities moved along the optical flow, then refined.
    # With ``carry_motion`` 0 (the "fast" preset) every other frame is carried on any device.
    keyframe_interval: int = 2
    # With ``keyframe_interval`` above 1, a frame is carried only where the objects moved at most
    # this many grid cells two frames before (engine.window: the 90th percentile of the flow's
    # length over their cells; decided two frames ahead, as the box is); 0: the interval alone
    # decides, every n-th frame. On a CPU; on a GPU every frame is seen. Five-fold cross-validation
    # on the H.264 copy, J&F against every frame seen, seeds 0 / 1 / 2: -0.05 / -0.13 / -0.02 with
    # 17.7% of the frames carried (0.7 cells: +0.13 / -0.79 / -0.11, 24%); the 30 training
    # sequences as mp4 through `vosctl segment`, float32, 2 cores: 14.1 -> 15.2 fps (bear +29%,
    # fast-moving ones unchanged). README, twenty-third round. At max side 640 carried where the
    # objects moved at most 2 (3) cells, refined: CV J&F 0.846 (0.839) at 26.4 (27.2) fps against the
    # fixed interval's 0.840 at 27.9 (README, twenty-ninth round). 2 in the defaults since the
    # forty-first round (0 before, every other frame whatever the motion; "fast" keeps 0, "accurate"
    # has 0.5): with both key frames around a carried one (``carry_between``) the fast movers still
    # lost most on the carried frames (mallard-fly J -10.8 against its key frames, dog-agility -9.5).
    # CV J&F on the H.264 copy with the fold refiners, seeds 0 / 1: 0.8516 -> 0.8634 (+1.18; 19 / 11
    # sequences better / worse) and 0.8534 -> 0.8608 (+0.73; 20 / 10), the fast movers gaining with
    # both (dog-agility +7.0 / +6.1); 43% of the frames carried instead of 49%; 3 cells +0.54 / +0.04
    # (the shipped refiner). Multi-object dev clips, seeds 0 / 1: twins +0.5 / +0.4, same kind +0.3 /
    # -0.3, crowds -0.2 / +0.3 J per object. The 30 training sequences as mp4 through `vosctl
    # segment`, interleaved, fps printed: float32 19.47 -> 18.55 (-4.7%; -5.5% with the kernels capped
    # to AVX2), bfloat16 22.24 -> 21.07 (-5.3%), float32 beside a busy process -1.3%; the fast movers
    # slowest (dog-agility -17%), bear unchanged.
    carry_motion: float = 2.0
    # A carried frame takes the last output (refined) moved along the optical flow at the flow's own
    # resolution (engine.refine_stage), instead of the last grid probabilities moved, upsampled and
    # refined again: no refinement for it (~3 ms instead of ~24 on one core at 480p). Against
    # refining them, CV J&F -0.12 / -0.11 / -0.15 (seeds 0 / 1 / 2; 1 sequence better, 15-18 worse),
    # multi-object dev clips -0.1 to -0.3 mean J per object; 8% less CPU a frame over the 30
    # training sequences, +3.5% fps printed (two interleaved runs over them), +4.5% idle and loaded
    # in process (four clips). README, twenty-fourth round. Without ``prior_flow`` (no flow)
    # carried frames are refined. With every other frame carried (the defaults) the moved output cost
    # 1.45 points of CV J&F (twenty-fourth round), so they are refined; the "accurate" preset's until
    # the thirty-second round, where refining its carried frames from both key frames gained 0.17.
    carry_refined: bool = False
    # Off: a frame carried at the grid (``carry_refined`` off) is refined by the learned refiner
    # alone, not the bilateral solver after it (with ``refine`` "learned+bilateral"; a frame the
    # network saw gets both). Against the solver after it, CV J&F on the H.264 copy -0.46 / -0.45 /
    # -0.43 (seeds 0 / 1 / 2; twenty-ninth round) with the key frame before alone, -0.40 / -0.40
    # (seeds 0 / 1) with both key frames (``carry_between``), for +12% fps over the 30
    # training sequences. Off by default since the thirty-first round: with ``carry_between`` the
    # defaults gained both (README). The solver alone on the carried frames lost 1.5 points. The
    # solver after the learned refiner at 384 or 256 working pixels instead: +0.32 / +0.17 (seed 0)
    # for 7.0 / 4.9 ms a carried frame against 9.4 at 512; a guided filter weighted by the margin
    # +0.17 for 4.4 ms (README, thirty-second round): not in the defaults either.
    carried_bilateral: bool = False
    # A frame carried at the grid (``carry_refined`` off) between two key frames takes the mean of
    # the key frame before, moved forward along the optical flow, and the key frame after, moved back
    # (engine.between), where the caller refines in frame order after stepping on (the CLI, ``vosctl
    # eval``). Against the key frame before alone: CV J&F +0.80 / +0.78 (seeds 0 / 1; 0.8425 -> 0.8505
    # with seed 0) with the solver on the carried frames (H.264 copy; 27 of 30 sequences better with
    # each seed, fast movers most), for 2-3% of fps (the refinement of a carried frame waits for the
    # next key frame). Off: the key frame before alone. README, thirty-first round.
    carry_between: bool = True
    # On a CPU the network sees only the box around the cells the gate can reach (decided two frames
    # ahead: the objects grown by two reaches and the margin), widened by ``embed_context`` cells of
    # context (engine.window); a key frame whose box misses a cell retrieval needs is embedded again
    # whole. 0: the whole frame. Five-fold cross-validation on the H.264 copy, J&F against the whole
    # frame, seeds 0 / 2: context 1 +0.40 / -0.42, 4 +0.12 / +0.01, 8 +0.32 / -0.30; bear at 480p,
    # float32, 2 cores: the network 0.056 -> 0.048 s a frame (its box is ~60% of the frame).
    # README, twenty-second round.
    embed_context: int = 4
    # An object whose annotation has a thin part far from its body (a kite's lines, a mast) keeps it:
    # after the refiners, thin pixels that respond as the annotated ones did, near the part on the
    # frame before and joined to the object, become the object's (engine.thin_parts). Off: the
    # refiners' output alone. Five-fold cross-validation on the H.264 copy: README, thirty-fifth round.
    thin_parts: bool = True
    # Labels within a few pixels of a boundary between labels snapped to the frame's own edges at its
    # full resolution, after the refiners and before the thin parts (engine.edge_snap: a colour-guided
    # filter of each label's mask). Five-fold cross-validation on the H.264 copy, J&F +0.37 / +0.35 /
    # +0.28 (seeds 0 / 1 / 2; J +0.8, F -0.0 to -0.2; 26 / 4, 25 / 5, 24 / 6 sequences better /
    # worse); multi-object dev clips, mean J per object, twins +0.6 / +0.6, crowd +0.9 / +1.2 (seeds
    # 0 / 1). 2-4 ms a frame on the refining thread: fps printed over the 30 training sequences as
    # mp4, float32 -1.6%, bfloat16 -9.1%. Off in the "fast" and "accurate" presets (above). README,
    # thirty-sixth round.
    edge_snap: bool = True

    def __post_init__(self) -> None:
        if self.max_size < ALIGN:
            raise VosError(f"--max-size must be at least {ALIGN}.")
        if self.refine not in REFINERS:
            raise VosError(f"Unknown refinement '{self.refine}'; choose one of: {', '.join(REFINERS)}.")
        if self.memory_object_power < 0 or self.memory_objects < 1:
            raise VosError("memory_object_power must not be negative, and memory_objects must be at least 1.")
        if not 0.0 < self.memory_threshold <= 1.0:
            raise VosError("The memory threshold must be in (0, 1].")
        if self.prior_radius < 0 or not 0.0 <= self.prior_floor <= 1.0 or not 0.0 <= self.prior_lost <= 1.0:
            raise VosError("The temporal prior needs a radius of zero or more, and a floor and a lost level in [0, 1].")
        if self.runtime not in RUNTIMES:
            raise VosError(f"Unknown runtime '{self.runtime}'; choose one of: {', '.join(RUNTIMES)}.")
        if min(self.refine_size, self.learned_size, self.refine_lambda, self.refine_band) < 0:
            raise VosError("The refinement sizes, smoothness weight and band must be zero or more.")
        if self.learned_enlarge < 1.0:
            raise VosError("learned_enlarge must be at least 1 (1: a small frame is refined at its own size).")
        if self.refine_iterations < 1:
            raise VosError("The refinement needs at least one solver iteration.")
        if self.gate_margin < 0:
            raise VosError("The gate margin must be zero or more cells.")
        if self.bank_stride < 1 or self.bank_band < 0:
            raise VosError("The bank stride must be at least 1 and its band zero or more cells.")
        if self.small_object_cells < 0 or not 0.0 < self.small_object_fraction <= 1.0:
            raise VosError("The small-object cells must be zero or more and their fraction in (0, 1].")
        if self.interior_stride < 1 or not 0.0 <= self.interior_level <= 1.0 or self.interior_band < 0:
            raise VosError("The interior stride must be at least 1, its level in [0, 1] and its band zero or more.")
        if self.keyframe_interval < 1:
            raise VosError("The key-frame interval must be at least 1.")
        if self.carry_motion < 0:
            raise VosError("The motion a carried frame allows must be zero or more cells.")
        if self.embed_context < 0:
            raise VosError("The embedding's context must be zero or more cells.")

    # How the key frames are chosen: every frame, by motion, or by a fixed interval. One place for
    # the session (may it embed ahead?) and the schedule (which frames are carried?).
    @property
    def carries_by_motion(self) -> bool:
        """Frames are carried where the objects moved little (``carry_motion``), where the schedule
        is on (a CPU: engine.window)."""
        return self.keyframe_interval > 1 and self.carry_motion > 0

    @property
    def fixed_interval(self) -> bool:
        """Every ``keyframe_interval``-th frame is a key frame whatever the motion (known up front)."""
        return self.keyframe_interval > 1 and self.carry_motion <= 0

    @staticmethod
    def setting_names() -> tuple[str, ...]:
        """The names ``with_overrides`` takes: the session's own and the retrieval's."""
        own = [name for name in SessionConfig.__dataclass_fields__ if name != "retrieval"]
        return (*own, *RetrievalConfig.__dataclass_fields__)

    def with_overrides(self, **changes) -> SessionConfig:
        """A copy with the given settings changed; ``None`` values are ignored."""
        unknown = sorted(set(changes) - set(self.setting_names()))
        if unknown:
            raise VosError(f"Unknown session setting '{unknown[0]}'; choose from: {', '.join(self.setting_names())}.")
        retrieval_keys = {k for k in changes if k in RetrievalConfig.__dataclass_fields__}
        for name, value in changes.items():
            current = getattr(self.retrieval if name in retrieval_keys else self, name)
            _check_type(name, value, current)
        retrieval = replace(self.retrieval, **{k: changes[k] for k in retrieval_keys if changes[k] is not None})
        rest = {k: v for k, v in changes.items() if k not in retrieval_keys and v is not None}
        return replace(self, retrieval=retrieval, **rest)


def _check_type(name: str, value, current) -> None:
    """Refuse a value of another kind than the setting's own: a switch given the text 'False' (any
    text is true) or a number given as text would otherwise change the session silently."""
    if value is None or current is None:
        return
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise VosError(f"The setting '{name}' is true or false, not {value!r}.")
    elif isinstance(current, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise VosError(f"The setting '{name}' is a number, not {value!r}.")
