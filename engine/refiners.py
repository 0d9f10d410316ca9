"""The refiner of a session by name, for the device its probabilities live on."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.bilateral_params import BilateralParams
from engine.bilateral_refiner import BilateralRefiner
from engine.config import REFINERS, SessionConfig
from engine.devices import reduced_precision
from engine.errors import VosError
from engine.mask_refiner import MAX_ENLARGE, SHIPPED_REFINER, LearnedRefiner, RefinerNet, load_refiner
from engine.refiner_runtime import OpenVinoRefiner
from engine.runtime import resolve_runtime

__all__ = ["RefinerChain", "learned_refiner", "load_refiner_network", "make_refiner", "session_refiners"]


class RefinerChain:
    """Refiners applied one after the other: ``chain(frame, probs) -> probs``."""

    def __init__(self, stages: list) -> None:
        self.stages = stages

    def __call__(self, frame, probs):
        for stage in self.stages:
            probs = stage(frame, probs)
        return probs


def load_refiner_network(refiner) -> None:
    """Compile the learned refiner's network now where it is compiled at its first call (OpenVINO),
    so that a caller with a core to spare takes the compilation off the refining thread's way
    (vosctl.pipeline: while the first frame is embedded). Other refiners have nothing to load."""
    for stage in refiner.stages if isinstance(refiner, RefinerChain) else [refiner]:
        if isinstance(stage, LearnedRefiner) and isinstance(stage.compiled, OpenVinoRefiner):
            stage.compiled.load()


_LEARNED: dict[tuple[str, int, str], RefinerNet] = {}  # (file, its mtime, device) -> net, read once


def learned_refiner(
    path: str | None,
    device: torch.device | str,
    work_size: int | None = None,
    runtime: str = "torch",
    half: bool = False,
    enlarge: float = MAX_ENLARGE,
) -> LearnedRefiner:
    """The learned refiner of a file (None: the shipped one) on ``device``, working at longer side
    ``work_size`` (None: its default, 0: the frame's own size); the network is read once per
    process and shared (it keeps no state between frames), again if the file is rewritten.
    ``runtime`` "openvino" (a CPU): the network compiled by OpenVINO (engine.refiner_runtime);
    "auto": that where OpenVINO is installed; else torch. ``half``: the compiled network runs in
    bfloat16 where the CPU has it (as the embedding network does with the session's ``half``).
    ``enlarge``: a frame smaller than ``work_size`` is enlarged at most this much (1: never)."""
    file = Path(path).resolve() if path else SHIPPED_REFINER
    device = torch.device(device)
    try:
        stamp = file.stat().st_mtime_ns
    except OSError:
        stamp = 0  # load_refiner says what is wrong with it
    key = (str(file), stamp, str(device))
    if key not in _LEARNED:
        _LEARNED[key] = load_refiner(file, device)
    net = _LEARNED[key]
    compiled = None
    if device.type == "cpu" and resolve_runtime(runtime, device, False) == "openvino":
        bfloat16 = half and reduced_precision(device) == torch.bfloat16
        compiled = OpenVinoRefiner.for_net(net, bfloat16=bfloat16)
    sizes = {"work_size": work_size} if work_size is not None else {}
    return LearnedRefiner(net, compiled=compiled, enlarge=enlarge, **sizes)


def make_refiner(
    name: str,
    device: torch.device | str,
    params: BilateralParams | None = None,
    *,
    crop: bool = False,
    band: float = 0.0,
    refiner_file: str | None = None,
    runtime: str = "torch",
    learned_size: int | None = None,
    half: bool = False,
    learned_enlarge: float = MAX_ENLARGE,
):
    """``refiner(frame, probs) -> probs`` for :attr:`SessionConfig.refine` ``name``, or None for "none".

    "bilateral" is the numpy/scipy solver on a CPU device (the faster one there) and the torch solver
    on CUDA or MPS, which keeps the probabilities on the device; both solve the same system.
    ``crop`` (the numpy solver on the uncertain window only) and ``band`` (its grid on the pixels
    near uncertain ones only) have no effect on the torch solver.
    "learned" is the learned boundary refiner of ``refiner_file`` (None: the shipped one), at longer
    side ``learned_size`` (None: the refiner's default; 0: the frame's own size; the solver's is
    ``params.max_side``; a smaller frame enlarged at most ``learned_enlarge`` times), its network run
    by ``runtime``, in bfloat16 with ``half`` where the CPU has it (:func:`learned_refiner`);
    "learned+bilateral" runs the solver after it.
    """
    key = name.strip().lower()
    if key not in REFINERS:
        raise VosError(f"Unknown refiner '{name}'; use one of {', '.join(REFINERS)}.")
    if key == "none":
        return None
    stages = []
    if key.startswith("learned"):
        stages.append(learned_refiner(refiner_file, device, learned_size, runtime, half, learned_enlarge))
    if key.endswith("bilateral"):
        stages.append(_bilateral(device, params, crop, band))
    return stages[0] if len(stages) == 1 else RefinerChain(stages)


def session_refiners(config: SessionConfig, device: torch.device | str):
    """The refiner a session's settings name, and the one for its frames carried at the grid (None:
    the same): the learned refiner alone where the solver follows it (``carried_bilateral`` off)."""
    params = BilateralParams(
        max_side=config.refine_size or None,
        lam=config.refine_lambda,
        iterations=config.refine_iterations,
    )
    refiner = make_refiner(
        config.refine,
        device,
        params,
        crop=config.refine_crop,
        band=config.refine_band,
        runtime=config.runtime,
        refiner_file=config.refiner_file,
        learned_size=config.learned_size,
        half=config.half,
        learned_enlarge=config.learned_enlarge,
    )
    if isinstance(refiner, RefinerChain) and not config.carried_bilateral:
        return refiner, refiner.stages[0]  # the learned refiner, without the solver after it
    return refiner, None


def _bilateral(device: torch.device | str, params: BilateralParams | None, crop: bool, band: float):
    if torch.device(device).type == "cpu":
        return BilateralRefiner(params, crop=crop, band=band)
    from engine.bilateral_torch import TorchBilateralRefiner

    return TorchBilateralRefiner(params)
