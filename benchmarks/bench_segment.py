"""Seconds per frame of each stage of ``vosctl segment``, and end to end, idle and under load.

    python benchmarks/bench_segment.py [--video examples/bear.mp4 --mask examples/bear.png]
        [--model PATH|imagenet] [--threads 2] [--preset fast|balanced|accurate] [--set NAME=VALUE ...]
        [--precisions float32,bfloat16] [--loads 0,1] [--batch N] [--repeat 2]

For each precision (float32 always; bfloat16 only where the CPU computes it natively) and each
load (0: idle; 1: one other CPU-bound process running beside it, as on a busy machine), the whole
pipeline runs as the CLI runs it (decode thread, engine, refine + encode thread; overlay video and
mask PNGs written) and the best of ``--repeat`` runs is reported, in one process (the network
compiled once). The last column, "printed", is what ``vosctl segment`` itself prints when run as a
user runs it, a fresh process each time: its start (loading the libraries, compiling the network,
the first frame) counts, as it does for a user; the best of ``--repeat`` such runs (not with
``--set``, which the CLI does not take). Stage times are summed over
threads that overlap, so they add up to more than the end-to-end time. The CPU's flags are printed:
speed depends on them (AVX2 alone, or AVX512 / AVX512-BF16 / AMX).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vosctl.threads import compute_threads, configure_threads  # noqa: E402

configure_threads()  # as the CLI does, before torch loads

import torch  # noqa: E402

from engine.devices import cpu_has_native_bf16  # noqa: E402
from engine.factory import build_model  # noqa: E402
from engine.session import session_config_for  # noqa: E402
from vosctl.pipeline import overlay_preset_for, segment_file  # noqa: E402
from vosctl.video import Frame, open_source  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)


def _busy() -> None:
    while True:
        pass


@contextlib.contextmanager
def competing(load: int):
    """``load`` other CPU-bound processes running while the block runs (a busy machine)."""
    context = multiprocessing.get_context("spawn")
    hogs = [context.Process(target=_busy, daemon=True) for _ in range(load)]
    for hog in hogs:
        hog.start()
    try:
        yield
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args, model, half: bool, load: int) -> tuple[float, dict[str, float], int]:
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = session_config_for(model, preset=args.preset, half=half, **overrides)
    best = None
    with competing(load), tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            result = segment_file(
                video=args.video,
                mask=args.mask,
                model=model,
                config=config,
                device=torch.device("cpu"),
                output=Path(tmp) / f"bench{attempt}.mp4",
                masks_dir=Path(tmp) / f"masks{attempt}",
                batch=args.batch,
                overlay_preset=overlay_preset_for(args.preset),
                encode_thread=not args.no_encode_thread,
            )
            if best is None or result.seconds < best.seconds:
                best = result
    return best.seconds / best.frames, {k: v / best.frames for k, v in best.stage_seconds.items()}, best.frames


def printed_fps(args, half: bool, load: int) -> float | None:
    """The fps ``vosctl segment`` prints, run in a fresh process beside ``load`` busy ones."""
    if args.set or args.batch != 1 or args.no_encode_thread:
        return None
    best = None
    with competing(load), tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            command = [sys.executable, "-m", "vosctl", "segment", str(args.video.resolve()),
                       "--mask", str(args.mask.resolve()), "--masks-dir", f"{tmp}/masks{attempt}",
                       "-o", f"{tmp}/out{attempt}.mp4", "--threads", str(args.threads)]  # fmt: skip
            command += ["--full-precision"] * (not half) + ["--preset", args.preset] * bool(args.preset)
            if args.model:  # a file named from here, or a name the CLI knows
                command += ["--model", str(Path(args.model).resolve()) if Path(args.model).exists() else args.model]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
            fps = float(re.search(r"\(([\d.]+) fps\)", done.stdout).group(1))
            best = fps if best is None else max(best, fps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "examples" / "bear.mp4")
    parser.add_argument("--mask", type=Path, default=ROOT / "examples" / "bear.png")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--loads", default="0,1", help="Competing CPU-bound processes, e.g. 0,1.")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-encode-thread", action="store_true", help="Refine and encode in the main thread.")
    parser.add_argument("--repeat", type=int, default=2, help="Runs per case; the fastest is reported.")
    args = parser.parse_args()
    torch.set_num_threads(compute_threads(args.threads))  # as the CLI splits --threads

    start = time.perf_counter()
    with open_source(args.video) as source:
        frames = [item for item in source.items() if isinstance(item, Frame)]
    decode = (time.perf_counter() - start) / len(frames)
    height, width = frames[0].image.shape[:2]
    del frames
    model = build_model(args.model)
    precisions = [p for p in args.precisions.split(",") if p == "float32" or cpu_has_native_bf16()]
    print(
        f"video {args.video.name} at {width}x{height}; {args.threads} threads"
        f" ({torch.get_num_threads()} per compute thread); CPU flags: {cpu_flags()}"
    )
    print(f"preset {args.preset or 'balanced'}, settings {args.set or 'defaults'}; decode alone {decode:.4f} s/frame")
    rows = []
    for precision in precisions:
        for load in (int(n) for n in args.loads.split(",")):
            seconds, stages, n = run(args, model, precision != "float32", load)
            rows.append((precision, load, seconds, stages, printed_fps(args, precision != "float32", load)))
    stages = sorted({stage for row in rows for stage in row[3]})
    header = f"{'precision':<10}{'load':>5}" + "".join(f"{s:>10}" for s in stages)
    print(header + f"{'end to end':>12}{'fps':>7}{'printed':>9}")
    for precision, load, seconds, per_stage, printed in rows:
        cells = "".join(f"{per_stage.get(s, 0.0):>10.4f}" for s in stages)
        shown = f"{printed:>9.1f}" if printed is not None else f"{'-':>9}"
        print(f"{precision:<10}{load:>5}{cells}{seconds:>12.4f}{1.0 / seconds:>7.1f}{shown}")


if __name__ == "__main__":
    main()
