"""``vosctl train``: parse, call :func:`trainer.train.run_training`, report.

Several machines, with torchrun (the same command, launched once per machine)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m vosctl train --data DAVIS --out runs/x --gpus all
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engine.errors import VosError
from trainer.settings import DataSettings, LossSettings, ModelSettings, OptimSettings, RunSettings, TrainSettings
from vosctl.console import out, reported_errors
from vosctl.options import DebugOption, DeviceOption, codec_crf_option


def parse_sequence_list(value: str | None) -> tuple[str, ...]:
    """A comma list of sequence names, or a file: one name per line, or DAVIS ImageSets lines."""
    if not value:
        return ()
    path = Path(value)
    if path.is_file():
        names: dict[str, None] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            tokens = line.split()
            if tokens and not tokens[0].startswith("#"):
                # "/JPEGImages/480p/<seq>/00000.jpg ..." names its sequence in the parent folder.
                names.setdefault(Path(tokens[0]).parent.name if "/" in tokens[0] else tokens[0], None)
        return tuple(names)
    if "/" in value or value.endswith(".txt"):
        raise VosError(f"The sequence list {value} does not exist.")
    return tuple(name.strip() for name in value.split(",") if name.strip())


def parse_scale(value: str) -> tuple[float, float]:
    """``"0.55,0.9"`` -> (0.55, 0.9); the range itself is checked by DataSettings."""
    try:
        low, high = (float(part) for part in value.split(","))
    except ValueError:
        raise VosError(f"--scale takes MIN,MAX such as 0.55,0.9, not '{value}'.") from None
    return low, high


def parse_inference(pairs: list[str] | None) -> dict:
    """["spatial_weight=1", "refine=none"] -> {"spatial_weight": 1, "refine": "none"} (JSON values, else text)."""
    settings: dict = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise VosError(f"--infer takes NAME=VALUE, not '{pair}'.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        settings[key.strip()] = value
    return settings


def train(
    data: Annotated[
        Path | None, typer.Option("--data", help="Training videos in the DAVIS layout (JPEGImages/, Annotations/).")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for checkpoint.pt, metrics.jsonl and model.pt.")
    ] = Path("runs/train"),
    sequences: Annotated[
        str | None,
        typer.Option(
            "--sequences", help="Comma list or file of training sequences (default: all but --val-sequences)."
        ),
    ] = None,
    val_sequences: Annotated[
        str | None, typer.Option("--val-sequences", help="Comma list or file of sequences held back for validation J.")
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps (length of the lr schedule).")] = 2000,
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", min=1, help="Pause after this step; continue with --resume.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per process and step.")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    crop: Annotated[int, typer.Option("--crop", help="Square crop side in pixels, a multiple of 32.")] = 320,
    scale: Annotated[
        str | None,
        typer.Option(
            "--scale",
            help="MIN,MAX: random scale of the frames before cropping, relative to their stored size "
            "(default 0.55,0.9).",
        ),
    ] = None,
    frames_per_sample: Annotated[
        int, typer.Option("--frames-per-sample", min=2, help="Frames per sample: one anchor frame + the pool.")
    ] = 3,
    anchors_per_label: Annotated[
        int, typer.Option("--anchors-per-label", min=1, help="Anchor pixels drawn per label and sample.")
    ] = 256,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            help="triplet: the paper's (nearest same-label vs nearest other-label pixel, --margin); "
            "vote: -log of the share of the softmax vote of the k nearest pixels that the anchor's "
            "own label gets, as retrieval votes (--vote-k, --vote-temperature, --margin).",
        ),
    ] = "triplet",
    margin: Annotated[
        float,
        typer.Option(
            "--margin", min=0.0, help="By how much, on the squared distance 2 - 2cos, the own label must win."
        ),
    ] = 0.7,
    vote_k: Annotated[int, typer.Option("--vote-k", min=1, help="Neighbours that vote in the vote loss.")] = 5,
    vote_temperature: Annotated[
        float,
        typer.Option("--vote-temperature", min=1e-6, help="Softmax temperature of the vote loss, on 2 - 2cos."),
    ] = 0.05,
    cache_features: Annotated[
        bool,
        typer.Option(
            "--cache-features",
            help="Compute the frozen backbone's features once per frame (no augmentation); with "
            "--train-backbone-from S, the layers at stride S and coarser run on the cached finer level.",
        ),
    ] = False,
    cache_every: Annotated[
        int, typer.Option("--cache-every", min=1, help="With --cache-features: cache every n-th frame.")
    ] = 1,
    cache_crop: Annotated[
        float,
        typer.Option(
            "--cache-crop", min=0.1, max=1.0, help="With --cache-features: random windows this fraction of a side."
        ),
    ] = 1.0,
    cache_flip: Annotated[
        bool, typer.Option("--cache-flip", help="With --cache-features: flip the cached maps at random.")
    ] = False,
    cache_max_size: Annotated[
        int | None,
        typer.Option(
            "--cache-max-size",
            min=32,
            help="With --cache-features: longer side of the cached frames (default: the model's max_size).",
        ),
    ] = None,
    cache_paste: Annotated[
        float,
        typer.Option(
            "--cache-paste",
            min=0.0,
            max=1.0,
            help="With --cache-features: share of samples with another sequence's object pasted in as a distractor.",
        ),
    ] = 0.0,
    cache_paste_objects: Annotated[
        int,
        typer.Option(
            "--cache-paste-objects",
            min=1,
            help="With --cache-paste: at most this many pasted objects a sample (1 to N, each from another sequence).",
        ),
    ] = 1,
    cache_pseudo: Annotated[
        float,
        typer.Option(
            "--cache-pseudo",
            min=0.0,
            max=1.0,
            help="With --cache-features: share of samples that are pseudo-videos, a frame and random warps of it.",
        ),
    ] = 0.0,
    cache_pseudo_views: Annotated[
        int,
        typer.Option("--cache-pseudo-views", min=1, help="With --cache-pseudo: warped views of each frame."),
    ] = 2,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="With --cache-features: keep the features here for later runs.")
    ] = None,
    codec_crf: Annotated[int | None, codec_crf_option("--cache-dir (else the --out folder)")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.")] = 1e-4,
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            help="efficientnet_lite0/1/2, efficientnet_lite0_s16 (Lite0 to stride 16), deeplab_resnet101 or tiny.",
        ),
    ] = "efficientnet_lite0",
    backbone_weights: Annotated[
        Path | None,
        typer.Option(
            "--backbone-weights", help="Weights file of deeplab_resnet101 (MS_DeepLab_resnet_trained_VOC.pth)."
        ),
    ] = None,
    train_backbone: Annotated[
        bool, typer.Option("--train-backbone", help="Fine-tune the backbone too (default: frozen).")
    ] = False,
    train_backbone_from: Annotated[
        int,
        typer.Option(
            "--train-backbone-from",
            min=0,
            metavar="STRIDE",
            help="With --train-backbone: fine-tune only the layers at this output stride or coarser (e.g. 16).",
        ),
    ] = 0,
    hidden: Annotated[int, typer.Option("--hidden", min=8, help="Channels of the head's hidden layers.")] = 128,
    coords: Annotated[
        bool, typer.Option("--coords/--no-coords", help="Feed the normalised (x, y, t) to the head, as the paper.")
    ] = True,
    skip: Annotated[
        float,
        typer.Option(
            "--skip", min=0.0, help="Keep the untrained backbone features beside the learned ones, with this weight."
        ),
    ] = 0.0,
    infer: Annotated[
        list[str] | None,
        typer.Option(
            "--infer",
            metavar="NAME=VALUE",
            help="A session setting saved in the model and used for validation, e.g. spatial_weight=1 (repeatable).",
        ),
    ] = None,
    gpus: Annotated[str, typer.Option("--gpus", help="GPUs, one process each: '0,1' or 'all'.")] = "",
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="CPU processes (gloo) when no --gpus.")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch threads per process.")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue from this checkpoint.pt with its saved settings.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (each process adds its rank).")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data loader processes per process.")] = 1,
    val_every: Annotated[
        int, typer.Option("--val-every", min=0, help="Validate every N steps (0: only at the end).")
    ] = 500,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=0, help="Write checkpoint.pt every N steps.")
    ] = 500,
    device: DeviceOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Train the embedding head with the paper's pixel-wise triplet loss.

    --gpus 0,1 starts one process per GPU (NCCL); --nproc N starts N CPU processes (gloo).
    On several machines, run the same command under torchrun on each, e.g.:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500
    -m vosctl train --data DAVIS --out runs/x --gpus all

    With --resume, the data, model, loss and optimiser settings come from the checkpoint;
    --steps, --out, --gpus/--nproc/--device, --workers and --val-every may change.
    """
    with reported_errors(debug):
        from trainer.train import run_training  # torch.distributed and friends only when training

        settings = TrainSettings(
            data=DataSettings(
                root=data,
                sequences=parse_sequence_list(sequences),
                val_sequences=parse_sequence_list(val_sequences),
                crop=crop,
                **({"scale": parse_scale(scale)} if scale else {}),
                frames_per_sample=frames_per_sample,
                cache_features=cache_features,
                cache_every=cache_every,
                cache_crop=cache_crop,
                cache_flip=cache_flip,
                cache_max_size=cache_max_size,
                cache_paste=cache_paste,
                cache_paste_objects=cache_paste_objects,
                cache_pseudo=cache_pseudo,
                cache_pseudo_views=cache_pseudo_views,
                cache_dir=cache_dir,
                codec_crf=codec_crf,
            ),
            model=ModelSettings(
                backbone=backbone,
                backbone_weights=str(backbone_weights.resolve()) if backbone_weights else None,
                train_backbone=train_backbone,
                train_backbone_from=train_backbone_from,
                hidden=hidden,
                use_coords=coords,
                skip=skip,
                inference=parse_inference(infer),
            ),
            loss=LossSettings(
                anchors_per_label=anchors_per_label,
                kind=loss,
                margin=margin,
                vote_k=vote_k,
                vote_temperature=vote_temperature,
            ),
            optim=OptimSettings(batch_size=batch_size, lr=lr, weight_decay=weight_decay),
            run=RunSettings(
                out=out_dir,
                steps=steps,
                stop_after=stop_after,
                workers=workers,
                device=device,
                gpus=gpus,
                nproc=nproc,
                threads=threads,
                val_every=val_every,
                checkpoint_every=checkpoint_every,
            ),
            seed=seed,
            resume=resume,
        )
        result = run_training(settings=settings)
        state = "finished" if result.finished else "paused"
        out.print(f"Training {state} at step {result.step} in {result.seconds / 60:.1f} min.")
        if result.val_j is not None:
            out.print(f"  validation J {result.val_j:.4f} on {len(result.val)} sequences")
        out.print(f"  wrote {result.checkpoint}")
        if result.model is not None:
            out.print(f"  wrote {result.model} (use it with --model)")
