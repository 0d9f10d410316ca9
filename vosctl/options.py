"""Options shared by several commands, as ``Annotated`` aliases, and the choice enums."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from vosctl.annotations import Direction


class Refine(str, Enum):
    bilateral = "bilateral"
    learned = "learned"
    learned_bilateral = "learned+bilateral"
    none = "none"


class AnnotationChoice(str, Enum):
    auto = "auto"
    all = "all"
    first = "first"


class Preset(str, Enum):
    fast = "fast"
    balanced = "balanced"
    accurate = "accurate"


DirectionOption = Annotated[
    Direction | None,
    typer.Option(
        "--direction",
        help="forward: from the first mask to the end; backward: from the last mask to frame 0; both (default): "
        "forward from the first mask and backward from it to frame 0. Frames no pass reaches are background.",
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="A model file from `vosctl train`, or 'imagenet' (untrained features). Default: the shipped model.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
MaxSizeOption = Annotated[
    int | None,
    typer.Option("--max-size", min=32, help="Longer side the network sees (default: the model's)."),
]
OnlineOption = Annotated[
    bool | None,
    typer.Option("--online/--no-online", help="Online memory of confident pixels (default: on)."),
]
RefineOption = Annotated[
    Refine | None,
    typer.Option(
        "--refine",
        help="Mask refinement: the bilateral solver, the learned boundary refiner, both (learned first), "
        "or none (default: the model's).",
    ),
]
KOption = Annotated[int | None, typer.Option("--k", min=1, help="Neighbours that vote for each pixel.")]
FullPrecisionOption = Annotated[
    bool,
    typer.Option(
        "--full-precision",
        help="Compute in float32, not float16 (CUDA) or bfloat16 (CPUs with AVX512-BF16/AMX).",
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU cores to use (default: all); the network and the engine, which run at once, get half each.",
    ),
]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch",
        min=1,
        help="Frames the network embeds at once, ahead of propagation (default: 1 on a CPU, 8 on a GPU).",
    ),
]
PresetOption = Annotated[
    Preset | None,
    typer.Option(
        "--preset",
        help="balanced (the defaults): max side 640, the network and retrieval on every other frame, and on "
        "every frame where the objects move fast (a frame between takes the key frames on both sides of it along "
        "the optical flow and is refined by the learned refiner at 576 working pixels), labels near a boundary "
        "snapped to the frame's edges, cross-validation J&F 0.862 (frames as H.264 leaves them); fast: every other "
        "frame whatever the motion, without the snap (J&F 0.850, faster where the objects move fast), the "
        "overlay encoded faster (about twice the file size); accurate: max side 768, a frame "
        "carried only where the objects moved little (from the key frames on both sides, refined in full), the "
        "learned refiner at 640, about 0.7x balanced's speed on 2 CPU cores, J&F 0.875, small objects among "
        "several kept better. On a GPU balanced and accurate see every frame (README, Results). Options given "
        "beside it win.",
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")]
PathArgument = Path


def session_overrides(
    *,
    preset: Preset | None,
    max_size: int | None,
    online: bool | None,
    k: int | None,
    refine: Refine | None,
    full_precision: bool,
) -> dict:
    """The session settings the shared options ask for (None: the model's own), preset included:
    the keywords of :func:`engine.session.session_config_for`."""
    return {
        "preset": preset.value if preset is not None else None,
        "max_size": max_size,
        "online": online,
        "k": k,
        "refine": refine.value if refine is not None else None,
        "half": False if full_precision else None,
    }


def codec_crf_option(kept: str) -> typer.models.OptionInfo:
    """``--codec-crf`` of the training commands; ``kept`` says where the decoded copies go."""
    return typer.Option(
        "--codec-crf",
        min=0,
        max=51,
        help=f"Train on the frames as H.264 at this CRF leaves them (23: ffmpeg's default), as in the mp4s "
        f"segmented later; the decoded copies are kept in {kept}.",
    )
