"""Build models by name or from a model file, and write model files.

A model file holds the :class:`ModelConfig` and only what was trained: the head, and the backbone
only when it was fine-tuned (the pretrained backbone weights come from their own package). Floats
are stored in half precision to keep the file small; loading uses ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from engine.errors import VosError
from engine.files import write_atomic
from engine.model import EmbeddingModel, ModelConfig, create_model, trained_backbone_state

FORMAT = "vosctl-model"
SHIPPED_MODEL = Path(__file__).parent / "weights" / "default.pt"
# Named models a user can ask for without a path.
NAMED_MODELS = {"imagenet": ModelConfig(backbone="efficientnet_lite0", head="features")}


def default_model_spec() -> str:
    """The shipped trained model when it is installed, else the untrained ImageNet features."""
    return str(SHIPPED_MODEL) if SHIPPED_MODEL.exists() else "imagenet"


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def save_model_file(model: EmbeddingModel, path: str | Path) -> None:
    """Write ``model`` as a compact model file, atomically."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": asdict(model.config),
        "head": _half(model.head.state_dict()),
    }
    backbone = trained_backbone_state(model)
    if backbone is not None:
        payload["backbone"] = _half(backbone)
    atomic_save(payload, path)


def atomic_save(payload: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def _config_from_dict(raw: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(raw) - known
    if unknown:
        raise VosError(f"The model file has unknown settings: {', '.join(sorted(unknown))}.")
    return ModelConfig(**raw)


def _load_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: str | Path, own: dict | None = None
) -> None:
    """Load ``state`` into ``module``; its keys must be exactly those of ``own`` (default: all)."""
    own = module.state_dict() if own is None else own
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise VosError(
            f"The {what} weights in {path} do not fit the model "
            f"({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})."
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def read_torch_file(path: str | Path, what: str) -> object:
    """``torch.load`` on the CPU with ``weights_only=True``; a missing or foreign file is a VosError.

    ``what`` names the file in messages, e.g. "model file" or "checkpoint".
    """
    path = Path(path)
    if not path.is_file():
        raise VosError(f"The {what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise VosError(f"{path} is not a readable {what} ({type(error).__name__}).") from error


def load_model_file(path: str | Path) -> EmbeddingModel:
    """Read a model file written by :func:`save_model_file` (or a training checkpoint)."""
    path = Path(path)
    payload = read_torch_file(path, "model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VosError(f"{path} is not a vosctl model file.")
    config = _config_from_dict(payload["config"])
    # A partly fine-tuned backbone starts from the pretrained weights; a wholly fine-tuned one
    # comes entirely from the file.
    partial = config.train_backbone and config.train_backbone_from > 0
    model = create_model(config, pretrained=partial or "backbone" not in payload)
    _load_strict(model.head, payload["head"], "head", path)
    if "backbone" in payload:
        load_trained_backbone(model, payload["backbone"], path)
    return model


def load_trained_backbone(model: EmbeddingModel, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load the backbone weights a model file or checkpoint carries: exactly the layers training
    changes (:func:`engine.model.trained_backbone_state`); a mismatch is a VosError naming ``source``."""
    _load_strict(model.backbone, state, "backbone", source, trained_backbone_state(model))


def build_model(spec: str | Path | None = None, device: str | torch.device = "cpu") -> EmbeddingModel:
    """A model by name (``imagenet``), by model file path, or the default; on ``device``, in eval mode."""
    spec = default_model_spec() if spec is None else str(spec)
    if spec in NAMED_MODELS:
        model = create_model(NAMED_MODELS[spec])
    else:
        model = load_model_file(spec)
    return model.to(device).eval()
