"""Five-fold cross-validation over the 30 DAVIS 2016 training sequences: a held-out score on all 30.

The dev split (fold 0, ``make_dev_split.py``) is six easy-to-middling sequences; the hard ones of
the training set (bmx-bumps, kite-walk, paragliding, surf, ...) are what DAVIS val is full of. Each
fold's model is trained with the shipped recipe on the other 24 sequences and scored on its own 6,
so every sequence is scored by a model that never saw it.

    python benchmarks/cross_validate.py splits                  # DAVIS-layout root with f0..f4 split files
    python benchmarks/cross_validate.py train --fold f1         # the shipped recipe without f1 (each fold)
    python benchmarks/cross_validate.py train --fold f1 --seed 1   # another seed, in runs/cv/f1-s1
    python benchmarks/cross_validate.py train --fold f1 --extra '--cache-paste 0' --tag nopaste   # runs/cv/f1-nopaste
    python benchmarks/cross_validate.py train --fold f1 --recipe head-only --tag head   # the recipe before round 20
    python benchmarks/cross_validate.py eval --set prior_flow=true --threads 1
    python benchmarks/cross_validate.py eval --model imagenet         # the untrained features
    python benchmarks/cross_validate.py eval --fold-models 'runs/gpu/ft-{fold}.pt'   # other fold models
    python benchmarks/cross_validate.py train-refiner --fold f1   # the learned refiner without f1
    python benchmarks/cross_validate.py eval --set 'refiner_file=runs/cv/{fold}/refiner.pt'   # refined by it
    python benchmarks/cross_validate.py codec --crf 23 --out runs/cv-davis-h264   # the frames through H.264
    python benchmarks/cross_validate.py eval --root runs/cv-davis-h264   # scored on them (as mp4 clips are)
    python benchmarks/cross_validate.py train --fold f1 --recipe head-only --data runs/cv-davis-h264 --tag h264

``eval`` prints J and F per fold and over the 30 sequences (the mean over sequences, as DAVIS
reports), for the default session settings or the ``--set`` overrides. Fold models live in
``runs/cv/FOLD/model.pt``; fold 0's defaults to the held-out dev model ``runs/hyb-m03-s0/model.pt``
when ``runs/cv/f0`` was not trained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_dev_split import DEV_SEQUENCES, write_split  # noqa: E402

FOLDS = {
    "f0": DEV_SEQUENCES,
    "f1": ("bmx-bumps", "boat", "bear", "kite-walk", "mallard-fly", "rollerblade"),
    "f2": ("breakdance-flare", "bus", "elephant", "lucia", "paragliding", "scooter-gray"),
    "f3": ("car-turn", "flamingo", "hike", "motorbike", "stroller", "surf"),
    "f4": ("hockey", "mallard-water", "rhino", "swing", "tennis", "train"),
}
# The shipped model's recipe (README, Training), with the fold's sequences held out: the head's
# settings (also those of gpu_round.sh's fine-tuning), the cached-feature training, and the
# backbone's stride-32 stage trained on the frames as H.264 leaves them (since the twentieth round;
# HEAD_ONLY_RECIPE, `train --recipe head-only`, is the recipe before it: the head on DAVIS's JPEGs).
HEAD_RECIPE = "--skip 1.0 --margin 0.3 --hidden 64 --weight-decay 0.05 --infer spatial_weight=1.0 --seed 0"
CACHE_RECIPE = (
    "--steps 600 --cache-features --cache-crop 0.75 --cache-flip --cache-max-size 512 --cache-paste 0.5"
    " --cache-paste-objects 3"
)
HEAD_ONLY_RECIPE = f"{HEAD_RECIPE} {CACHE_RECIPE}"
RECIPE = f"{HEAD_ONLY_RECIPE} --codec-crf 23 --train-backbone --train-backbone-from 32"
RECIPES = {"shipped": RECIPE, "head-only": HEAD_ONLY_RECIPE}
# Each recipe keeps its features (and the shipped one its H.264 copies of the frames) apart: the
# store's files are named by sequence, so the two would overwrite each other's.
FEATURE_CACHES = {"shipped": "feature-cache-h264", "head-only": "feature-cache"}
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "davis2016-train"
CV_ROOT = ROOT / "runs" / "cv-davis"
RUNS = ROOT / "runs" / "cv"


def training_sequences(fold: str) -> list[str]:
    """The sequences a fold's model trains on: those of every other fold."""
    return sorted(s for name, seqs in FOLDS.items() if name != fold for s in seqs)


def make_splits(data: Path) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    for name, seqs in FOLDS.items():
        frames = write_split(data, CV_ROOT, name, seqs)
        (RUNS / f"{name}-train.txt").write_text("\n".join(training_sequences(name)) + "\n")
        print(f"{name}: {len(seqs)} sequences, {frames} frames")


def train(
    fold: str, data: Path, threads: int, seed: int, extra: str = "", tag: str = "", recipe: str = "shipped"
) -> None:
    """The recipe's fold model in runs/cv/FOLD (seed 0) or runs/cv/FOLD-sN (another seed); with
    ``extra`` training options after the recipe's (the later of two wins), in runs/cv/FOLD-TAG[-sN]."""
    name = f"{fold}-{tag}" if tag else fold
    out = RUNS / (name if seed == 0 else f"{name}-s{seed}")
    cmd = [
        sys.executable, "-m", "vosctl", "train", "--data", str(data), "--sequences", str(RUNS / f"{fold}-train.txt"),
        "--out", str(out), "--cache-dir", str(ROOT / "runs" / FEATURE_CACHES[recipe]), "--threads", str(threads),
        *RECIPES[recipe].split(), *extra.split(), "--seed", str(seed),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def train_refiner(fold: str, data: Path, threads: int, seed: int, extra: str = "", tag: str = "") -> None:
    """The learned boundary refiner (vosctl train-refiner, its default recipe) without the fold's
    sequences, in runs/cv/FOLD/refiner.pt (or runs/cv/FOLD-sN for another seed); with ``extra``
    options after the recipe's (e.g. '--steps 2400'), in runs/cv/FOLD-TAG[-sN]."""
    name = f"{fold}-{tag}" if tag else fold
    out = RUNS / (name if seed == 0 else f"{name}-s{seed}")
    cmd = [
        sys.executable, "-m", "vosctl", "train-refiner", "--data", str(data), "--sequences",
        str(RUNS / f"{fold}-train.txt"), "--out", str(out), "--threads", str(threads), "--seed", str(seed),
        *extra.split(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def make_codec_root(crf: int, out: Path) -> None:
    """A copy of runs/cv-davis whose frames went through H.264 at ``crf`` (trainer.codec): one stream
    per sequence, decoded; the annotations and split files are links to runs/cv-davis's."""
    from trainer.codec import codec_copy

    if not (CV_ROOT / "ImageSets").is_dir():
        raise SystemExit("Make the splits first: python benchmarks/cross_validate.py splits")
    codec_copy(CV_ROOT, sorted(s for seqs in FOLDS.values() for s in seqs), crf, out)
    print(f"{out}: the folds' frames through H.264 at CRF {crf}")


def fold_model(fold: str, pattern: str | None = None) -> Path:
    if pattern:
        return Path(pattern.format(fold=fold))
    path = RUNS / fold / "model.pt"
    if not path.exists() and fold == "f0":
        path = ROOT / "runs" / "hyb-m03-s0" / "model.pt"
    return path


def fold_settings(overrides: dict, fold: str) -> dict:
    """Session settings for one fold: "{fold}" in a setting's text names it (a refiner file trained
    without the fold's sequences, ``refiner_file=runs/cv/{fold}/refiner.pt``)."""
    return {k: v.format(fold=fold) if isinstance(v, str) else v for k, v in overrides.items()}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def evaluate(
    overrides: dict, folds: list[str], out: Path, model_spec: str | None, pattern: str | None, root: Path = CV_ROOT
) -> None:
    from vosctl.eval_run import evaluate_model

    slug = "_".join([model_spec or pattern or "folds", *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    out = out / slug.replace("/", "-")
    per_sequence: dict[str, tuple[float, float]] = {}
    start = time.time()
    for fold in folds:
        model = model_spec or str(fold_model(fold, pattern))
        summary = evaluate_model(
            data=root, split=fold, out=out / fold, model_spec=model, overrides=fold_settings(overrides, fold)
        )
        for seq, scores in summary["sequences"].items():
            per_sequence[seq] = (scores["J_mean"], scores["F_mean"])
        print(f"{fold}: J {summary['J_mean']:.3f} F {summary['F_mean']:.3f}", flush=True)
    j = sum(v[0] for v in per_sequence.values()) / len(per_sequence)
    f = sum(v[1] for v in per_sequence.values()) / len(per_sequence)
    print(json.dumps({seq: round(v[0], 3) for seq, v in sorted(per_sequence.items())}))
    print(f"{json.dumps(overrides)} {len(per_sequence)} sequences: J {j:.4f} F {f:.4f} ({time.time() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    splits = sub.add_parser("splits")
    splits.add_argument("--data", type=Path, default=DEFAULT_DATA)
    tr = sub.add_parser("train")
    tr.add_argument("--fold", choices=sorted(FOLDS), required=True)
    tr.add_argument("--data", type=Path, default=DEFAULT_DATA)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--seed", type=int, default=0, help="Another seed trains into runs/cv/FOLD-sSEED.")
    tr.add_argument(
        "--extra", default="", help="Training options after the recipe's (the later wins), e.g. '--cache-paste 0'."
    )
    tr.add_argument("--tag", default="", help="With --extra or --recipe: train into runs/cv/FOLD-TAG[-sSEED].")
    tr.add_argument("--recipe", choices=sorted(RECIPES), default="shipped",
                    help="head-only: the recipe before the twentieth round (the head alone, on DAVIS's JPEGs); "
                    "needs a --tag.")  # fmt: skip
    tref = sub.add_parser("train-refiner")
    tref.add_argument("--fold", choices=sorted(FOLDS), required=True)
    tref.add_argument("--data", type=Path, default=DEFAULT_DATA)
    tref.add_argument("--threads", type=int, default=1)
    tref.add_argument("--seed", type=int, default=0)
    tref.add_argument("--extra", default="", help="Options after the recipe's, e.g. '--steps 2400'.")
    tref.add_argument("--tag", default="", help="With --extra: train into runs/cv/FOLD-TAG[-sSEED].")
    codec = sub.add_parser("codec")
    codec.add_argument("--crf", type=int, default=23, help="x264's constant rate factor (23: ffmpeg's default).")
    codec.add_argument("--out", type=Path, default=ROOT / "runs" / "cv-davis-h264")
    ev = sub.add_parser("eval")
    ev.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    ev.add_argument("--folds", default=",".join(FOLDS))
    ev.add_argument(
        "--root",
        type=Path,
        default=CV_ROOT,
        help="The folds' data: runs/cv-davis (made by `splits`), or a copy in its layout, e.g. with frames "
        "that went through a video codec.",
    )
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--out", type=Path, default=RUNS / "results")
    ev.add_argument("--model", help="One model for every fold (e.g. imagenet) instead of the fold models.")
    ev.add_argument("--fold-models", metavar="PATTERN", help="Fold model files other than runs/cv/FOLD/model.pt, "
                    "e.g. runs/gpu/ft-{fold}.pt.")  # fmt: skip
    args = parser.parse_args()
    if args.command == "splits":
        make_splits(args.data)
    elif args.command == "codec":
        make_codec_root(args.crf, args.out)
    elif args.command == "train":
        if (args.extra or args.recipe != "shipped") and not args.tag:
            parser.error("--extra and --recipe need a --tag, so the recipe's own fold models are not overwritten.")
        train(args.fold, args.data, args.threads, args.seed, args.extra, args.tag, args.recipe)
    elif args.command == "train-refiner":
        if args.extra and not args.tag:
            parser.error("--extra needs a --tag, so the recipe's own fold refiners are not overwritten.")
        train_refiner(args.fold, args.data, args.threads, args.seed, args.extra, args.tag)
    else:
        import torch

        torch.set_num_threads(args.threads)
        overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
        evaluate(overrides, args.folds.split(","), args.out, args.model, args.fold_models, args.root)


if __name__ == "__main__":
    main()
