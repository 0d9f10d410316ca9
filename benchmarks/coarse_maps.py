"""Held-out coarse probabilities of the 30 training sequences: what the learned refiner really gets.

Each sequence is propagated, unrefined, by the fold model that never saw it (benchmarks/
cross_validate.py), from its first frame's mask, and the stride-8 grid probabilities of every frame
(what the session upsamples and hands the refiner) are written to ``OUT/SEQ.pt``: a list of
(K + 1, gh, gw) float16 tensors, one per frame. ``vosctl train-refiner --coarse-dir OUT`` trains on
them beside the simulated ones (trainer/refiner_train.py); a fold's refiner then sees only the
maps of sequences outside the fold, each made by a model that never saw that sequence.

    python benchmarks/coarse_maps.py --root runs/cv-davis-mp4 --out runs/coarse/s0 --set half=false
    python benchmarks/coarse_maps.py --folds f0,f1 --fold-models 'runs/cv/{fold}-s1/model.pt' --out runs/coarse/s1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_validate import CV_ROOT, FOLDS, fold_model, fold_settings, parse_value  # noqa: E402
from engine.datasets import read_annotation, read_split, sequence_annotations, sequence_frames  # noqa: E402
from engine.factory import build_model  # noqa: E402
from engine.session import VideoSession, session_config_for  # noqa: E402


def read_sequence(root: Path, seq: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames as (H, W, 3) uint8 RGB, ground truths as (H, W) uint8 ids) of one sequence."""
    paths = list(zip(sequence_frames(root, seq), sequence_annotations(root, seq), strict=True))
    frames = [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f, _ in paths]
    return frames, [read_annotation(a) for _, a in paths]


def coarse_grids(session: VideoSession, frames: list[np.ndarray], first_mask: np.ndarray) -> list[torch.Tensor]:
    """The unrefined (K + 1, gh, gw) grid probabilities of every frame, the first given ``first_mask``
    (a frame carried between key frames: the last key frame's moved along the flow)."""
    grids = []
    for index, frame in enumerate(frames):
        session.step_batch([frame], [first_mask if index == 0 else None], refine=False)
        grids.append(session.propagator.previous.clone())
    return grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=CV_ROOT, help="The folds' data (runs/cv-davis or a copy).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", default=",".join(FOLDS))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fold-models", metavar="PATTERN", help="Fold model files other than runs/cv/FOLD/model.pt.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for fold in args.folds.split(","):
        model = build_model(str(fold_model(fold, args.fold_models)), "cpu")
        config = session_config_for(model, **fold_settings(overrides, fold))
        for seq in read_split(args.root, fold):
            frames, truths = read_sequence(args.root, seq)
            grids = coarse_grids(VideoSession(model, config, device="cpu"), frames, truths[0])
            torch.save([g.to(torch.float16) for g in grids], args.out / f"{seq}.pt")
            print(f"{fold} {seq}: {len(grids)} frames ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
