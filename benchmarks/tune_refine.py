"""Refinement settings over the five-fold cross-validation, propagating each sequence only once.

Refinement never feeds back into propagation (the session's state is the coarse probabilities), so
the coarse probabilities of every frame can be computed once per sequence, with the fold model
that never saw it, and each refinement variant applied to the same ones. A sweep of many bilateral
settings then costs one propagation pass plus the refinements, instead of a full cross-validation
run per setting.

    python benchmarks/tune_refine.py --variant base= --variant side512=max_side=512 \\
        --variant s4=sigma_spatial=4,max_side=512 [--folds f0,f1] [--set NAME=VALUE]

A variant is NAME=SETTINGS, the settings being comma-separated bilateral parameters
(engine.bilateral_params.BilateralParams) and ``crop=true`` (the solver on the uncertain window only,
engine.bilateral.BilateralRefiner), or ``none`` for no refinement, or ``learned:PATH`` for a learned
refiner file (engine.mask_refiner; ``{fold}`` in PATH is the fold's name, so each fold is refined by
the refiner that never saw it; ``PATH@N`` works at longer side N), optionally followed by ``+`` and
bilateral settings to run the solver after it. Prints J and F of each
variant per fold and over all scored sequences, and per sequence in a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.coarse_maps import coarse_grids, read_sequence  # noqa: E402
from benchmarks.cross_validate import CV_ROOT, FOLDS, fold_model, parse_value  # noqa: E402
from engine.bilateral_params import BilateralParams  # noqa: E402
from engine.bilateral_refiner import BilateralRefiner  # noqa: E402
from engine.datasets import read_split  # noqa: E402
from engine.factory import build_model  # noqa: E402
from engine.metrics import f_measure, jaccard  # noqa: E402
from engine.refiners import RefinerChain, learned_refiner  # noqa: E402
from engine.session import VideoSession, channel_argmax, session_config_for  # noqa: E402
from vosctl.eval_run import fingerprint  # noqa: E402


def parse_variant(text: str):
    """NAME=SETTINGS -> (NAME, refiner factory of the fold name)."""
    name, _, settings = text.partition("=")
    if not settings.startswith("learned:"):
        refiner = bilateral_variant(settings)
        return name, lambda fold: refiner
    path, _, after = settings.removeprefix("learned:").partition("+")
    path, _, work = path.partition("@")
    then = bilateral_variant(after) if after else None

    def factory(fold: str):
        learned = learned_refiner(path.format(fold=fold), "cpu", int(work) if work else None)
        return learned if then is None else RefinerChain([learned, then])

    return name, factory


def bilateral_variant(settings: str):
    if settings.strip() == "none":
        return None
    names = {f.name for f in fields(BilateralParams)}
    values, crop = {}, False
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        if key == "crop":
            crop = bool(parse_value(value))
            continue
        if key not in names:
            raise SystemExit(f"Unknown bilateral parameter '{key}'; choose from {', '.join(sorted(names))}.")
        values[key] = parse_value(value)
    return BilateralRefiner(BilateralParams(**values), crop=crop)


def coarse_sequence(
    model, config, seq: str, cache: Path
) -> tuple[list[np.ndarray], list[torch.Tensor], list[np.ndarray]]:
    """Frames, unrefined (K + 1, H, W) probabilities and ground truths of one sequence.

    The grid probabilities (what the session upsamples before refining) are kept in ``cache``."""
    frames, truths = read_sequence(CV_ROOT, seq)
    file = cache / f"{seq}.pt"
    if file.exists():
        grids = torch.load(file)
    else:
        grids = coarse_grids(VideoSession(model, config, device="cpu"), frames, truths[0])
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(grids, file)
    size = frames[0].shape[:2]
    probs = [F.interpolate(g[None].float(), size=size, mode="bilinear", align_corners=False)[0] for g in grids]
    return frames, probs, truths


def score(frames, probs, truths, refiner) -> tuple[float, float]:
    js, fs = [], []
    for frame, p, truth in list(zip(frames, probs, truths, strict=True))[1:-1]:
        if refiner is not None:
            p = refiner(frame, p)
        pred = channel_argmax(p).numpy() > 0
        js.append(jaccard(pred, truth > 0))
        fs.append(f_measure(pred, truth > 0))
    return float(np.mean(js)), float(np.mean(fs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=SETTINGS")
    parser.add_argument("--folds", default=",".join(FOLDS))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fold-models", metavar="PATTERN", help="Fold model files other than runs/cv/FOLD/model.pt, "
                        "e.g. runs/cv/{fold}-paste3/model.pt.")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = dict(parse_variant(v) for v in args.variant)
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    per_seq: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in variants}
    start = time.time()
    for fold in args.folds.split(","):
        model_file = str(fold_model(fold, args.fold_models))
        model = build_model(model_file, "cpu")
        config = session_config_for(model, **overrides)
        stamp = fingerprint(model_file, config)
        refiners = {name: factory(fold) for name, factory in variants.items()}
        for seq in read_split(CV_ROOT, fold):
            frames, probs, truths = coarse_sequence(model, config, seq, ROOT / "runs" / "coarse-cache" / stamp)
            for name, refiner in refiners.items():
                per_seq[name][seq] = score(frames, probs, truths, refiner)
            print(f"{fold} {seq:20s} " + "  ".join(f"{n} {v[seq][0]:.3f}/{v[seq][1]:.3f}" for n, v in per_seq.items()),
                  flush=True)  # fmt: skip
    for name, scores in per_seq.items():
        j = np.mean([s[0] for s in scores.values()])
        f = np.mean([s[1] for s in scores.values()])
        print(
            json.dumps(
                {"variant": name, "per_sequence": {s: [round(a, 4), round(b, 4)] for s, (a, b) in scores.items()}}
            )
        )
        print(f"{name:12s} {len(scores)} sequences: J {j:.4f} F {f:.4f} J&F {(j + f) / 2:.4f}")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
