"""How many input sizes the two compiled networks meet in a run, and what their first calls cost.

OpenVINO prepares its kernels for each new input size: a network's first call at a size takes
longer than its later calls at the same size. The embedding network sees a box around the objects
(engine.window) and the learned refiner a window around the uncertain pixels (engine.mask_refiner),
and both change size as the objects move. For each clip, in a fresh process (what a user's run
is): the calls of each network, the distinct sizes, the time in them, and the time of first calls
beyond the median repeated call of the same size (sizes met once are not counted there).

    python benchmarks/bench_input_sizes.py examples/bear.mp4:examples/bear.png
    python benchmarks/bench_input_sizes.py clips/a.mp4:clips/a.png clips/b.mp4:clips/b.png --preset fast
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETWORKS = {
    "network": ("engine.openvino_runtime", "OpenVinoEmbedding"),
    "refiner": ("engine.refiner_runtime", "OpenVinoRefiner"),
}


def record_one(clip: str, mask: str, preset: str | None, out: Path) -> None:
    """Segment ``clip`` with the CLI, in this process, timing every call of the compiled networks."""
    import importlib

    calls: dict[str, list] = {name: [] for name in NETWORKS}
    for name, (module, cls_name) in NETWORKS.items():
        cls = getattr(importlib.import_module(module), cls_name)

        def timed(self, image, other, _call=cls.__call__, _log=calls[name]):
            start = time.perf_counter()
            result = _call(self, image, other)
            _log.append([list(image.shape[2:]) + [int(other.shape[0])], time.perf_counter() - start])
            return result

        cls.__call__ = timed
    from vosctl.cli import app

    with tempfile.TemporaryDirectory() as folder:
        args = ["segment", clip, "--mask", mask, "--masks-dir", f"{folder}/masks", "-o", f"{folder}/out.mp4"]
        app([*args, *(["--preset", preset] if preset else [])], standalone_mode=False)
    out.write_text(json.dumps(calls))


def summarise(calls: list) -> tuple[int, int, float, float]:
    """-> (calls, distinct sizes, seconds in all, seconds of first calls beyond a repeated call)."""
    first: dict[tuple, float] = {}
    later: dict[tuple, list[float]] = {}
    for size, seconds in calls:
        size = tuple(size)
        if size in first:
            later[size].append(seconds)
        else:
            first[size], later[size] = seconds, []
    excess = sum(first[s] - statistics.median(later[s]) for s in first if later[s])
    return len(calls), len(first), sum(seconds for _, seconds in calls), excess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", nargs="*", help="VIDEO:MASK pairs")
    parser.add_argument("--preset")
    parser.add_argument("--record", nargs=3, metavar=("CLIP", "MASK", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record_one(*args.record[:2], args.preset, Path(args.record[2]))
        return
    if not args.clips:
        parser.error("give at least one VIDEO:MASK pair")
    totals = {name: [0, 0, 0.0, 0.0] for name in NETWORKS}
    print(f"{'clip':<24}" + "".join(f"{name + ': calls, sizes, s, first calls +s':>44}" for name in NETWORKS))
    for pair in args.clips:
        clip, mask = pair.split(":")
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "calls.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--record", clip, mask, str(out)]
            preset = ["--preset", args.preset] if args.preset else []
            subprocess.run([*cmd, *preset], check=True, stdout=subprocess.DEVNULL)
            calls = json.loads(out.read_text())
        cells = []
        for name in NETWORKS:
            row = summarise(calls[name])
            totals[name] = [a + b for a, b in zip(totals[name], row, strict=True)]
            cells.append(f"{row[0]:>14}{row[1]:>8}{row[2]:>11.3f}{row[3]:>11.3f}")
        print(f"{Path(clip).stem:<24}" + "".join(cells))
    print(f"{'all':<24}" + "".join(f"{n:>14}{s:>8}{t:>11.3f}{e:>11.3f}" for n, s, t, e in totals.values()))


if __name__ == "__main__":
    main()
