"""Named trades of speed for accuracy (``--preset``), and a session's settings from a model, a preset
and the caller's options."""

from __future__ import annotations

from engine.config import SessionConfig
from engine.errors import VosError

# Named trades of speed for accuracy (README, Results): settings over the defaults, under the
# caller's own options. Cross-validation J&F on the H.264 copy (two or three seeds of fold models)
# and fps printed over the 30 training sequences (float32, 2 cores, one sitting; README,
# twenty-ninth round):
# - "balanced" is the defaults themselves: max side 640, the network and retrieval on every other
#   frame, and on every frame where the objects moved more than 2 grid cells (``carry_motion``,
#   forty-first round; every other frame whatever the motion before); a frame between takes the key
#   frames on both sides of it, moved to it along the optical flow (``carry_between``), and is
#   refined by the learned refiner alone (``carried_bilateral`` off). CV 0.846 / 0.841 (seeds 0 /
#   1; the fixed interval, thirty-first round), against 0.8425 / 0.8376 for the defaults of the
#   thirtieth round (the key frame before alone, the solver after the learned
#   refiner) at +9.4% fps (README, thirty-first round). The defaults then were the fastest setting
#   whose CV J&F on DAVIS's JPEG frames kept that of the defaults when the speed issue was filed
#   (0.845) within the 0.5 points the issue allows.
# - "fast": every other frame carried whatever the motion (the defaults until the forty-first
#   round), the masks without the snap below, the overlay encoded with x264's ultrafast preset
#   (vosctl.pipeline): about twice the file size. A frame smaller than the learned refiner's
#   working size is refined at its own size (``learned_enlarge``; thirty-ninth round). Max side 512
#   instead (twenty-ninth round: -1.4 points) gained 5%: decoding, refinement and encoding stay
#   whatever the network does.
# - "accurate": the defaults before the twenty-ninth round: max side 768, a frame carried only where
#   the objects moved at most half a grid cell (on a CPU; a GPU sees every frame). CV 0.866, 20.1
#   fps (28.6 for the defaults in that sitting). Its carried frames took the last output moved and
#   not refined again until the thirty-second round; now they take both key frames and are refined
#   by the learned refiner and the solver: CV 0.8689 -> 0.8706 / 0.8641 -> 0.8659 (seeds 0 / 1; 18 / 3
#   and 17 / 4 sequences better / worse), multi-object twins 0.657 -> 0.661, crowd 0.569 -> 0.571,
#   14.27 -> 14.12 fps over the 30 sequences (float32, interleaved). Its learned refiner at 640
#   working pixels (thirty-third round): CV 0.8706 -> 0.8730 (seed 0; 24 / 6), 14.82 -> 14.40 fps.
# Carried frames lose small objects among several (README, twenty-first round); a carried frame's
# last output moved instead of refined again cost the fixed interval 1.45 points of CV J&F
# (twenty-fourth round). Max side 896 with every cell retrieved (the "accurate" of the twenty-first
# to twenty-eighth rounds) gained 0.4 points over the old defaults at 0.57x their speed.
# - The labels snapped to the frame's edges (``edge_snap``, thirty-sixth round) are the defaults' alone:
#   CV +0.28 to +0.37 there for 2% of float32 fps (9% in bfloat16, where the refining thread bounds
#   the speed); "fast" leans to speed without them (the thirty-fifth round's masks, CV 0.852), and
#   "accurate" gained +0.07 (seed 0) from them, within the noise, for the same cost.
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"carry_motion": 0.0, "edge_snap": False, "learned_enlarge": 1.0},
    "balanced": {},
    "accurate": {
        "max_size": 768,
        "carry_motion": 0.5,
        "carried_bilateral": True,
        "learned_size": 640,
        "edge_snap": False,
    },
}


def preset_settings(name: str) -> dict[str, object]:
    if name not in PRESETS:
        raise VosError(f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    return dict(PRESETS[name])


def session_config_for(model, *, preset: str | None = None, **overrides) -> SessionConfig:
    """An EmbeddingModel's own inference settings (saved with it), then the ``preset``'s, then the
    caller's non-None overrides."""
    base = SessionConfig().with_overrides(**model.config.inference)
    if preset is not None:
        base = base.with_overrides(**preset_settings(preset))
    return base.with_overrides(**overrides)
