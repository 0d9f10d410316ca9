"""Seconds per frame and fps of each stage of ``vosctl segment`` at 480p, and end to end.

    python benchmarks/bench_segment.py [--video examples/bear.mp4 --mask examples/bear.png]
        [--model PATH|imagenet] [--threads N] [--refine none|bilateral] [--no-online]
        [--max-size N] [--full-precision]

Stages: decode (PyAV, alone), embed, retrieve, memory update, refine (from the session's own
timers), encode (overlay drawing and H.264 encoding), then the whole pipeline as the CLI runs it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from engine.devices import resolve_device
from engine.factory import build_model
from engine.session import session_config_for
from vosctl.pipeline import segment_file
from vosctl.video import Frame, open_source

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "examples" / "bear.mp4")
    parser.add_argument("--mask", type=Path, default=ROOT / "examples" / "bear.png")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--refine", choices=["none", "bilateral"], default=None)
    parser.add_argument("--online", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--full-precision", action="store_true", help="float32 even where bf16/fp16 is fast")
    parser.add_argument("--repeat", type=int, default=2, help="end-to-end runs; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    start = time.perf_counter()
    with open_source(args.video) as source:
        frames = [item for item in source.items() if isinstance(item, Frame)]
    decode = (time.perf_counter() - start) / len(frames)
    height, width = frames[0].image.shape[:2]
    del frames

    model = build_model(args.model, device)
    config = session_config_for(
        model,
        refine=args.refine,
        online=args.online,
        max_size=args.max_size,
        half=False if args.full_precision else None,
    )
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            result = segment_file(
                video=args.video,
                mask=args.mask,
                model=model,
                config=config,
                device=device,
                output=Path(tmp) / f"bench{run}.mp4",
                overwrite=True,
            )
            if best is None or result.seconds < best.seconds:
                best = result
    n = best.frames
    print(
        f"video {args.video.name}: {n} frames at {width}x{height}; device {device}, {args.threads} threads; "
        f"max_size {config.max_size}, online {config.online}, refine {config.refine}"
    )
    print(f"{'stage':<16}{'s/frame':>10}{'fps':>10}")
    rows = [("decode", decode)] + [(stage, seconds / n) for stage, seconds in best.stage_seconds.items()]
    rows.append(("end to end", best.seconds / n))
    for stage, seconds in rows:
        print(f"{stage:<16}{seconds:>10.4f}{(1.0 / seconds if seconds > 0 else float('inf')):>10.1f}")


if __name__ == "__main__":
    main()
