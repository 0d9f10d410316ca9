"""Seconds per frame of the engine alone (embed, flow, retrieve, memory, refine) on any device.

    python benchmarks/bench_engine.py FRAMES_DIR MASK.png [--device cuda] [--width 854] [--model PATH]

Reads a folder of JPEG/PNG frames (no video decoding, so it runs where PyAV is missing), optionally
resized to ``--width`` (to time 480p on smaller stored frames: the cost depends on the size, not
the content), and runs one session twice; the second run's per-stage times are printed. CUDA work
is synchronised at each stage boundary by the session's own timers.
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

from engine.devices import resolve_device  # noqa: E402
from engine.factory import build_model  # noqa: E402
from engine.session import VideoSession, session_config_for  # noqa: E402
from vosctl.masks import fit_mask, read_mask  # noqa: E402


def load(frames_dir: Path, mask_path: Path, width: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    paths = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    if width:
        height = round(frames[0].shape[0] * width / frames[0].shape[1])
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in frames]
    # The CLI's own mask reading (binary, palette or colours), resized to the frames as it does.
    return frames, fit_mask(read_mask(mask_path), *frames[0].shape[:2]).ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path)
    parser.add_argument("mask", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    frames, mask = load(args.frames, args.mask, args.width)
    model = build_model(args.model, device)
    config = session_config_for(model, max_size=args.max_size)
    for _ in range(2):  # the first run warms up kernels and allocators
        session = VideoSession(model, config, device=device)
        start = time.perf_counter()
        session.step(frames[0], mask=mask)
        for frame in frames[1:]:
            session.to_ids(session.step(frame))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    n = len(frames)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    print(f"{n} frames at {size}; {name}; max_size {config.max_size}, half {config.half}")
    print(f"{'stage':<12}{'s/frame':>10}")
    for stage, total in session.timings.items():
        print(f"{stage:<12}{total / n:>10.4f}")
    print(f"{'engine':<12}{seconds / n:>10.4f}  ({n / seconds:.1f} fps)")


if __name__ == "__main__":
    main()
