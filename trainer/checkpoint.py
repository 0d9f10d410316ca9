"""Training checkpoints: everything ``--resume`` needs, in a file ``build_model`` also reads.

A checkpoint is a model file (:mod:`engine.factory`: ``format``, ``config``, ``head`` and, when it
is trained, ``backbone``) in full precision, plus ``optimizer``, ``scheduler``, ``scaler``,
``step`` and the resolved ``settings``. Only tensors and plain containers are stored, so it loads
with ``weights_only=True``; it is written to a temporary file and renamed.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from engine.errors import VosError
from engine.factory import FORMAT, atomic_save, load_trained_backbone, read_torch_file
from engine.model import EmbeddingModel, trained_backbone_state
from trainer.settings import TrainSettings, settings_from_dict, settings_to_dict

KIND = "checkpoint"


def save_checkpoint(
    path: Path,
    *,
    model: EmbeddingModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    step: int,
    settings: TrainSettings,
) -> None:
    payload = {
        "format": FORMAT,
        "kind": KIND,
        "config": asdict(model.config),
        "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "settings": settings_to_dict(settings),
    }
    backbone = trained_backbone_state(model)
    if backbone is not None:
        payload["backbone"] = backbone
    atomic_save(payload, Path(path))


def load_checkpoint(path: Path) -> dict:
    """The payload of a checkpoint written by :func:`save_checkpoint`, on the CPU."""
    path = Path(path)
    payload = read_torch_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("kind") != KIND:
        raise VosError(f"{path} is not a vosctl training checkpoint (a final model file cannot be resumed).")
    return payload


def checkpoint_settings(payload: dict) -> TrainSettings:
    return settings_from_dict(payload["settings"])


def restore_checkpoint(
    payload: dict,
    *,
    model: EmbeddingModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> int:
    """Load the weights and the optimiser, scheduler and scaler states; returns the saved step."""
    model.head.load_state_dict(payload["head"])
    if "backbone" in payload:
        load_trained_backbone(model, payload["backbone"], "the checkpoint")
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return int(payload["step"])
