"""Seconds per frame of the engine alone (embed, flow, retrieve, refine) on any device, per batch size.

    python benchmarks/bench_engine.py FRAMES_DIR MASK.png [--device cuda] [--width 854] [--model PATH]
        [--batch 1,8] [--preset fast|balanced|accurate] [--set NAME=VALUE ...] [--profile]

Reads a folder of JPEG/PNG frames (no video decoding, so it runs where PyAV is missing), optionally
resized to ``--width`` (to time 480p on smaller stored frames: the cost depends on the size, not
the content), and runs one session twice per batch size (frames embedded together ahead of
propagation, ``VideoSession.step_batch``); the second run's per-stage times are printed. On CUDA
the stage times are exact only with ``--profile`` (a synchronisation at each stage boundary, which
costs time); without it only the total is, as in ``vosctl segment``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vosctl.threads import configure_threads  # noqa: E402

configure_threads()  # as the CLI does, before torch loads

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

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


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", type=Path)
    parser.add_argument("mask", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", default="1,8", help="Batch sizes to time, e.g. 1,8.")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    parser.add_argument("--profile", action="store_true", help="Synchronise at each stage (exact stage times).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    frames, mask = load(args.frames, args.mask, args.width)
    model = build_model(args.model, device)
    overrides = {"max_size": args.max_size}
    overrides.update((name, parse_value(value)) for name, value in (item.split("=", 1) for item in args.set))
    config = session_config_for(model, preset=args.preset, **overrides)
    n = len(frames)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    print(f"{n} frames at {size}; {name}; max_size {config.max_size}, half {config.half}, runtime {config.runtime}")
    for batch in (int(b) for b in args.batch.split(",")):
        for _ in range(2):  # the first run warms up kernels, allocators and the exported graph
            session = VideoSession(model, config, device=device, profile=args.profile)
            masks = [mask] + [None] * (n - 1)
            start = time.perf_counter()
            for offset in range(0, n, batch):
                for probs in session.step_batch(frames[offset : offset + batch], masks[offset : offset + batch]):
                    session.to_ids(probs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        print(f"batch {batch}:")
        print(f"  {'stage':<12}{'s/frame':>10}")
        for stage, total in session.timings.items():
            print(f"  {stage:<12}{total / n:>10.4f}")
        print(f"  {'engine':<12}{seconds / n:>10.4f}  ({n / seconds:.1f} fps)")


if __name__ == "__main__":
    main()
