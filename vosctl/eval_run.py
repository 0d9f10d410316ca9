"""``vosctl eval davis16`` with a model: run the engine on every sequence of a split and score it.

Results go to ``OUT/<seq>/<nnnnn>.png`` (the DAVIS results layout: 0/255 grey for single-object
sequences, palette PNGs otherwise), figures to ``OUT/results.{json,csv,png}``. Each finished
sequence leaves ``OUT/<seq>/.done.json`` stamped with a fingerprint of the model, the settings, the
refiner's weights and the engine's code, so ``--resume`` skips it only when the same ones made it.

Sequences are independent, so they are shared among worker processes (``nproc``, optionally one
GPU each) or among ``torchrun`` ranks; each sequence is computed the same way wherever it runs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist

from engine.between import InOrder
from engine.datasets import read_annotation, read_split, sequence_annotations, sequence_frames
from engine.devices import default_batch, resolve_device
from engine.errors import VosError
from engine.factory import build_model, default_model_spec
from engine.session import SessionConfig, VideoSession, session_config_for
from vosctl.evaluate import SequenceScorer, make_summary
from vosctl.masks import write_palette_png
from vosctl.palette import davis_palette

DONE = ".done.json"


def fingerprint(model_spec: str, config: SessionConfig) -> str:
    """Hash of the model (its file's bytes, or its name), the resolved session settings, the
    refiner file's bytes where one is set, and the code that makes the masks (:func:`code_digest`):
    results of another model, refiner or version of the engine are computed again, not reused."""
    digest = hashlib.sha256()
    for spec in (model_spec, config.refiner_file):
        if spec is None:
            continue
        path = Path(spec)
        digest.update(path.read_bytes() if path.is_file() else str(spec).encode())
    digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    digest.update(code_digest())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def code_digest() -> bytes:
    """Hash of the engine package's sources and shipped weights, and this module's source (a
    session's masks follow from them)."""
    import engine

    digest = hashlib.sha256()
    root = Path(engine.__file__).parent
    shipped = sorted(p for p in (root / "weights").glob("*") if p.is_file())
    for path in [*sorted(root.rglob("*.py")), *shipped, Path(__file__)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.digest()


@lru_cache(maxsize=2)
def _model(model_spec: str, device: str):
    return build_model(model_spec, device)


def _write_mask(path: Path, ids: np.ndarray, single: bool) -> None:
    if single:
        cv2.imwrite(str(path), (ids > 0).astype(np.uint8) * 255)
    else:
        write_palette_png(path, ids, davis_palette())


def _read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VosError(f"The frame {path} is not a readable image.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run_sequence(
    *,
    data: Path,
    seq: str,
    out: Path,
    model_spec: str,
    config: SessionConfig,
    device: str,
    stamp: str,
    batch: int | None = None,
) -> dict:
    """Segment one sequence from its first annotation, write its masks, return its figures."""
    frames, annotations = sequence_frames(data, seq), sequence_annotations(data, seq)
    if len(frames) != len(annotations):
        raise VosError(f"Sequence '{seq}' has {len(frames)} frames but {len(annotations)} annotations.")
    model = _model(model_spec, device)
    session = VideoSession(model, config, device=device)
    batch = batch or default_batch(torch.device(device))
    scorer = SequenceScorer()
    folder = out / seq
    folder.mkdir(parents=True, exist_ok=True)
    first = read_annotation(annotations[0])
    single = len(np.unique(first[first > 0])) == 1
    engine_seconds = 0.0
    start = time.perf_counter()
    pairs = list(zip(frames, annotations, strict=True))
    # Refined in frame order after stepping on, as the CLI does: a carried frame waits for the next
    # key frame (engine.between).
    in_order = InOrder(session)
    for offset in range(0, len(pairs), batch):
        chunk = pairs[offset : offset + batch]
        images = [_read_frame(frame_path) for frame_path, _ in chunk]
        step_start = time.perf_counter()
        given = [first if offset + i == 0 else None for i in range(len(chunk))]
        probs = session.step_batch(images, given, refine=False, later=True)
        for (_, ann_path), image, p, mask in zip(chunk, images, probs, given, strict=True):
            in_order.add((ann_path, image, p, mask is not None), p)
        ready = list(in_order.ready() if offset + batch < len(pairs) else in_order.finish())
        masks = [(path, session.output(image, p, was_given)) for path, image, p, was_given in ready]
        engine_seconds += time.perf_counter() - step_start
        for ann_path, ids in masks:
            _write_mask(folder / ann_path.name, ids, single)
            scorer.add(read_annotation(ann_path), ids)
    result = scorer.result()
    result.update(frames_total=len(frames), engine_seconds=engine_seconds, total_seconds=time.perf_counter() - start)
    (folder / DONE).write_text(json.dumps({"fingerprint": stamp, "result": result}))
    return result


def _run_sequence_job(job: dict) -> tuple[str, dict]:
    threads = job.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    return job["seq"], run_sequence(**job)


def _finished(out: Path, seq: str, stamp: str) -> dict | None:
    marker = out / seq / DONE
    if not marker.is_file():
        return None
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return saved["result"] if saved.get("fingerprint") == stamp else None


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1); sets up a gloo group when needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def evaluate_model(
    *,
    data: Path,
    split: str,
    out: Path,
    model_spec: str | None = None,
    overrides: dict | None = None,
    device: str = "auto",
    nproc: int = 1,
    gpus: list[int] | None = None,
    resume: bool = False,
    on_sequence=None,
    batch: int | None = None,
) -> dict:
    """Run and score the model on a DAVIS split; returns the summary (see vosctl.evaluate)."""
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise VosError(f"The DAVIS root {data} does not exist.")
    if nproc < 1:
        raise VosError("--nproc must be at least 1.")
    sequences = read_split(data, split)
    for seq in sequences:  # fail on a missing sequence before any work
        sequence_frames(data, seq), sequence_annotations(data, seq)
    model_spec = model_spec or default_model_spec()
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", None)
    config = session_config_for(build_model(model_spec, "cpu"), preset=preset, **overrides)
    stamp = fingerprint(model_spec, config)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()

    results: dict[str, dict] = {}
    todo: list[str] = []
    for seq in sequences:
        done = _finished(out, seq, stamp) if resume else None
        if done is not None:
            results[seq] = done
        else:
            todo.append(seq)
    mine = todo[rank::world]
    devices = [f"cuda:{g}" for g in gpus] if gpus else [str(resolve_device(device))]
    if world > 1 and torch.cuda.is_available() and not gpus:
        devices = [f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"]
    jobs = [
        dict(
            data=data,
            seq=seq,
            out=out,
            model_spec=model_spec,
            config=config,
            device=devices[i % len(devices)],
            stamp=stamp,
            batch=batch,
        )
        for i, seq in enumerate(mine)
    ]
    if nproc == 1 or len(jobs) <= 1:
        for job in jobs:
            seq, result = _run_sequence_job(job)
            results[seq] = result
            if on_sequence is not None:
                on_sequence(seq, result)
    else:
        threads = max(1, torch.get_num_threads() // nproc)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(nproc, len(jobs)), mp_context=context) as pool:
            for seq, result in pool.map(_run_sequence_job, [dict(job, threads=threads) for job in jobs]):
                results[seq] = result
                if on_sequence is not None:
                    on_sequence(seq, result)
    if world > 1:
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, results)
        for part in gathered:
            results.update(part)
    ordered = {seq: results[seq] for seq in sequences}
    frames = sum(r["frames_total"] for r in ordered.values())
    summary = make_summary(ordered, seconds_per_frame=sum(r["engine_seconds"] for r in ordered.values()) / frames)
    summary["end_to_end_seconds_per_frame"] = sum(r["total_seconds"] for r in ordered.values()) / frames
    summary["model"] = model_spec
    summary["settings"] = asdict(config)
    summary["fingerprint"] = stamp
    summary["rank"] = rank
    return summary
