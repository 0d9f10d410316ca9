"""Milliseconds per 480p frame of the fast bilateral solver, single-threaded, plus an IoU sanity check.

    python benchmarks/bench_bilateral.py [--max-side 256 320 0] [--repeat 15] [--sequence bear] [--torch] [--device cpu]

Uses the first frame of a DAVIS 2016 sequence and its ground-truth mask, degraded the way a
low-resolution network output is (area-downsampled by 16, bilinearly upsampled, Gaussian-blurred),
as the target, with confidence |2 p - 1|. For two objects the mask is cut into left and right
halves at its centroid. Each stage is run ``--repeat`` times and shown as three numbers in ms:
median wall time / best wall time / median CPU time of the process (the CPU time is what one
core costs even when other jobs share the machine and stretch the wall time):

    build            BilateralGrid(reference, params): resize, hashing, blur matrix, bistochastisation
    solve K=2 / K=3  grid.solve on background + 1 object / background + 2 objects
    refine 1 / 2 obj refine_probabilities end to end (build + solve + clip + renormalise)

``--max-side 0`` means full resolution (max_side=None). The process is pinned to one CPU core and
OpenMP / BLAS / OpenCV / torch are limited to one thread.

``--torch`` also times the torch solver (engine.bilateral_torch) on ``--device`` (cpu, cuda, mps):
probabilities and confidence start on the device, the frame as a host uint8 array (as the session
has it), and every timed call ends with a device synchronisation. "refine 1 obj" (2 channels,
background + object) is the per-frame cost of the session's refiner, less the confidence margin.
"""

from __future__ import annotations

import os

# Must be set before numpy / scipy / cv2 load their threading runtimes.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine import bilateral_torch  # noqa: E402
from engine.bilateral import BilateralGrid, BilateralParams, refine_probabilities  # noqa: E402

DEFAULT_DAVIS = ROOT.parent / "shared" / "data" / "davis2016-train"


def _time_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> str:
    """'median wall / best wall / median CPU' of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(1e3 * (time.perf_counter() - start))
        cpu.append(1e3 * (time.process_time() - start_cpu))
    return f"{statistics.median(wall):.1f}/{min(wall):.1f}/{statistics.median(cpu):.1f}"


def _degrade(mask: np.ndarray, factor: int = 16, blur: float = 4.0) -> np.ndarray:
    """(H, W) float32 soft version of a binary (H, W) mask, like an upsampled stride-16 prediction."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), blur)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--davis", type=Path, default=Path(os.environ.get("VOSCTL_DAVIS2016", DEFAULT_DAVIS)))
    parser.add_argument("--sequence", default="bear")
    parser.add_argument("--max-side", type=int, nargs="+", default=[BilateralParams().max_side or 0, 320, 480, 0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--torch", action="store_true", help="also time the torch solver")
    parser.add_argument("--device", default="cpu", help="device of the torch solver (cpu, cuda, mps)")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    image_path = args.davis / "JPEGImages" / "480p" / args.sequence / "00000.jpg"
    mask_path = args.davis / "Annotations" / "480p" / args.sequence / "00000.png"
    bgr = cv2.imread(str(image_path))
    gt = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if bgr is None or gt is None:
        sys.exit(f"Cannot read {image_path} or {mask_path}; pass --davis.")
    reference = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    gt = gt > 127
    height, width = gt.shape

    # Two objects: the mask's left and right halves, split at its centroid column.
    split = int(np.nonzero(gt)[1].mean())
    left = gt.copy()
    left[:, split:] = False
    objects = {1: [gt], 2: [left, gt & ~left]}
    probs = {}
    for k, masks in objects.items():
        soft = np.stack([_degrade(m) for m in masks])
        probs[k] = np.concatenate([np.clip(1.0 - soft.sum(axis=0, keepdims=True), 0.0, 1.0), soft])
    confidence = np.abs(2.0 * probs[1][1] - 1.0)

    print(f"{args.sequence}/00000 {width}x{height}, one CPU core, ms: median wall/best wall/median CPU")
    stages = ("build", "solve K=2", "solve K=3", "refine 1 obj", "refine 2 obj")
    header = " ".join(f"{stage:>16}" for stage in stages)
    print(f"{'solver':>12} {'max_side':>8} {'work':>9} {'vertices':>8} {header} {'IoU before -> after':>20}")
    solvers = [_Numpy()] + ([_Torch(torch.device(args.device))] if args.torch else [])
    for max_side in args.max_side:
        for solver in solvers:
            params = BilateralParams(max_side=max_side or None)
            print(f"{solver.name:>12} " + _row(solver, reference, probs, confidence, gt, params, args.repeat))


class _Numpy:
    """The numpy/scipy solver, on host arrays."""

    name = "numpy"
    grid = BilateralGrid
    refine = staticmethod(refine_probabilities)

    def inputs(self, probs: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return probs, confidence

    def labels(self, refined) -> np.ndarray:
        return refined.argmax(axis=0)

    def sync(self) -> None:
        pass


class _Torch:
    """The torch solver on ``device``: probabilities there, the frame a host array as in the session."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = f"torch {device}"
        self.refine = bilateral_torch.refine_probabilities

    def grid(self, reference: np.ndarray, params: BilateralParams) -> bilateral_torch.TorchBilateralGrid:
        return bilateral_torch.TorchBilateralGrid(reference, params, device=self.device)

    def inputs(self, probs: np.ndarray, confidence: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(probs).to(self.device), torch.from_numpy(confidence).to(self.device)

    def labels(self, refined: torch.Tensor) -> np.ndarray:
        return refined.argmax(0).cpu().numpy()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def _row(
    solver,
    reference: np.ndarray,
    probs: dict[int, np.ndarray],
    confidence: np.ndarray,
    gt: np.ndarray,
    params: BilateralParams,
    repeat: int,
) -> str:
    """One table line: timings of every stage and the 1-object IoU before / after refinement."""
    inputs = {k: solver.inputs(p, confidence) for k, p in probs.items()}
    grid = solver.grid(reference, params)
    cells = [_time_ms(lambda: solver.grid(reference, params), repeat, solver.sync)]
    for k in (1, 2):
        cells.append(_time_ms(lambda k=k: grid.solve(*inputs[k]), repeat, solver.sync))
    for k in (1, 2):
        cells.append(_time_ms(lambda k=k: solver.refine(reference, *inputs[k], params), repeat, solver.sync))
    refined = solver.refine(reference, *inputs[1], params)
    before = _iou(probs[1].argmax(axis=0) == 1, gt)
    after = _iou(solver.labels(refined) == 1, gt)
    work = "x".join(str(s) for s in grid.work_shape[::-1])
    timings = " ".join(f"{cell:>16}" for cell in cells)
    return f"{params.max_side or 'full':>8} {work:>9} {grid.n_vertices:>8} {timings} {before:8.4f} -> {after:.4f}"


if __name__ == "__main__":
    main()
