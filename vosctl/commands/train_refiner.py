"""``vosctl train-refiner``: parse, call :func:`trainer.refiner_train.train_refiner`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.errors import VosError
from vosctl.commands.train import parse_scale, parse_sequence_list
from vosctl.console import out, reported_errors
from vosctl.options import DebugOption, codec_crf_option


def train_refiner(
    data: Annotated[
        Path, typer.Option("--data", help="Training videos in the DAVIS layout (JPEGImages/, Annotations/).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for refiner.pt.")] = Path("runs/refiner"),
    sequences: Annotated[
        str | None, typer.Option("--sequences", help="Comma list or file of training sequences (default: all).")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = 1200,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option("--crop", min=32, help="Side of a training crop (pixels of 480p frames).")] = 224,
    every: Annotated[int, typer.Option("--every", min=1, help="Train on every N-th frame of each sequence.")] = 2,
    encoder: Annotated[
        str, typer.Option("--encoder", help="The frozen EfficientNet-Lite whose first layers the refiner reads.")
    ] = "efficientnet_lite0",
    width: Annotated[int, typer.Option("--width", min=1, help="Channels of the head's stride-4 part.")] = 32,
    fine: Annotated[int, typer.Option("--fine", min=1, help="Channels of the head's stride-2 part.")] = 16,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads torch may use.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the samples are a function of it.")] = 0,
    codec_crf: Annotated[int | None, codec_crf_option("the --out folder")] = None,
    scale: Annotated[
        str, typer.Option("--scale", help="MIN,MAX random scale of the frames before cropping.")
    ] = "0.4,1.25",
    cells: Annotated[
        str, typer.Option("--cells", help="MIN,MAX side in pixels of the simulated coarse grid's cells.")
    ] = "7,11",
    coarse_dir: Annotated[
        Path | None,
        typer.Option(
            "--coarse-dir",
            help="Real coarse probabilities to train on beside the simulated ones: SEQ.pt per sequence, "
            "as benchmarks/coarse_maps.py writes them (from models that never saw the sequence).",
        ),
    ] = None,
    coarse_share: Annotated[
        float, typer.Option("--coarse-share", help="With --coarse-dir: the share of samples that take them.")
    ] = 0.5,
    debug: DebugOption = False,
) -> None:
    """Train the learned boundary refiner (`--refine learned+bilateral`) on ground-truth masks.

    It needs no embedding model: its inputs (coarse probabilities on the stride-8 grid) are
    simulated from the masks, or, for a share of the samples, read from `--coarse-dir` (a model's
    real ones, benchmarks/coarse_maps.py). Use the file it writes with `--set refiner_file=PATH` in the
    benchmarks, or in place of engine/weights/refiner.pt.
    """
    with reported_errors(debug):
        from engine.mask_refiner import RefinerConfig
        from trainer.refiner_train import RefinerTrainSettings
        from trainer.refiner_train import train_refiner as run

        if crop % 4:
            raise VosError("--crop must be a multiple of 4.")
        settings = RefinerTrainSettings(
            data=data,
            out=out_dir,
            sequences=parse_sequence_list(sequences),
            steps=steps,
            batch=batch,
            crop=crop,
            every=every,
            threads=threads,
            seed=seed,
            config=RefinerConfig(encoder=encoder, width=width, fine=fine),
            codec_crf=codec_crf,
            scale=parse_scale(scale),
            cells=parse_cells(cells),
            coarse_dir=coarse_dir,
            coarse_share=coarse_share,
        )
        path = run(settings=settings, log=out.print)
        out.print(f"  wrote {path}")


def parse_cells(value: str) -> tuple[int, int]:
    """'MIN,MAX' -> (MIN, MAX) cell sides in pixels; the range itself is checked by RefinerTrainSettings."""
    try:
        low, high = (int(v) for v in value.split(","))
    except ValueError:
        raise VosError(f"--cells takes MIN,MAX such as 7,11, not '{value}'.") from None
    return low, high
