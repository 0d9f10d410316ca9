"""Training settings as nested, keyword-only dataclasses.

Split by what they decide. ``data``, ``model``, ``loss``, ``optim`` and ``seed`` define the training
trajectory and are saved in every checkpoint; ``--resume`` takes them from the checkpoint. ``run``
says how and where this run executes (steps, output folder, processes, devices, logging) and is
taken from the command that resumes. ``batch_size`` is per process: N processes see N times as
many samples per step (the settings are never edited to split a batch across ranks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import VosError
from engine.model import ModelConfig
from engine.session import SessionConfig
from trainer.loss import LOSS_KINDS


@dataclass(kw_only=True)
class DataSettings:
    root: Path | None  # None only when resuming: the checkpoint's folder is used
    sequences: tuple[str, ...] = ()  # empty: every sequence under root except the validation ones
    val_sequences: tuple[str, ...] = ()
    crop: int = 320  # square crop side, a multiple of 32; smaller frames are padded (ignored)
    frames_per_sample: int = 3  # one anchor frame + the pool frames
    # Scale of the frames before cropping; inference at --max-size 768 sees 854x480 ones at 0.9.
    scale: tuple[float, float] = (0.55, 0.9)
    jitter: float = 0.3  # brightness/contrast/saturation jitter strength
    # Frozen backbone only: compute its features once per frame at the inference size (no
    # augmentation) and train the head on them; several times faster on a CPU.
    cache_features: bool = False
    cache_every: int = 1  # cache every n-th frame (neighbouring frames are near duplicates)
    # Longer side of the cached frames; None: the size the model will run at (its ``--infer
    # max_size=N``, else the session's default), so the head trains on the features it meets.
    cache_max_size: int | None = None
    cache_crop: float = 1.0  # side of a random window of the cached maps, as a fraction of the frame
    cache_flip: bool = False  # flip cached maps at random (approximates flipped frames)
    cache_dir: Path | None = None  # keep cached features here for later runs
    # Share of samples with another sequence's object pasted beside the host's (trainer.feature_paste)
    cache_paste: float = 0.0
    cache_paste_objects: int = 1  # at most this many pasted objects a sample (1..N, each of another sequence)
    # Share of samples that are pseudo-videos: a frame and random warps of it (trainer.pseudo_video)
    cache_pseudo: float = 0.0
    cache_pseudo_views: int = 2  # warped views per frame (of every third cached frame)
    # Train on the frames as H.264 at this CRF leaves them (trainer.codec); None: as stored.
    codec_crf: int | None = None

    def __post_init__(self) -> None:
        if self.crop < 32 or self.crop % 32:
            raise VosError(f"--crop must be a positive multiple of 32, not {self.crop}.")
        if self.frames_per_sample < 2:
            raise VosError("--frames-per-sample must be at least 2: one anchor frame and a pool frame.")
        if not 0.0 < self.cache_crop <= 1.0:
            raise VosError("The cached-feature crop must be a fraction in (0, 1].")
        if not 0.0 <= self.cache_paste <= 1.0:
            raise VosError("The share of samples with a pasted distractor must be in [0, 1].")
        if self.cache_paste_objects < 1:
            raise VosError("--cache-paste-objects must be at least 1.")
        if self.cache_paste > 0 and not self.cache_features:
            raise VosError("--cache-paste pastes into cached feature maps: add --cache-features.")
        if not 0.0 <= self.cache_pseudo <= 1.0:
            raise VosError("The share of pseudo-video samples must be in [0, 1].")
        if self.cache_pseudo_views < 1:
            raise VosError("--cache-pseudo-views must be at least 1.")
        if self.cache_pseudo > 0 and not self.cache_features:
            raise VosError("--cache-pseudo caches the warped frames' features: add --cache-features.")
        if not 0.0 < self.scale[0] <= self.scale[1]:
            raise VosError("The scale range must be positive and increasing.")
        if self.codec_crf is not None and not 0 <= self.codec_crf <= 51:
            raise VosError("--codec-crf must be in 0..51 (x264's range).")


@dataclass(kw_only=True)
class ModelSettings:
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None  # a user-supplied weights file (deeplab_resnet101)
    train_backbone: bool = False
    train_backbone_from: int = 0  # with train_backbone: only layers at this output stride or coarser
    dim: int = 128
    hidden: int = 128
    depth: int = 3
    use_coords: bool = True
    skip: float = 0.0  # keep the untrained features beside the learned ones, with this weight
    # Session settings the model is meant to run with (e.g. {"spatial_weight": 1.0}); saved in the
    # model file, so ``vosctl segment`` starts from them, and used by the validation during training.
    inference: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train_backbone_from and not self.train_backbone:
            raise VosError("--train-backbone-from needs --train-backbone.")
        SessionConfig().with_overrides(**self.inference)  # a VosError names a bad setting now

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone,
            backbone_weights=self.backbone_weights,
            head="embedding",
            dim=self.dim,
            hidden=self.hidden,
            depth=self.depth,
            use_coords=self.use_coords,
            skip=self.skip,
            train_backbone=self.train_backbone,
            train_backbone_from=self.train_backbone_from,
            inference=dict(self.inference),
        )


@dataclass(kw_only=True)
class LossSettings:
    anchors_per_label: int = 256
    kind: str = "triplet"  # trainer.loss.LOSS_KINDS
    margin: float = 0.7  # on the squared distance 2 - 2 cos, which lies in [0, 4] (both losses)
    vote_k: int = 5  # the vote loss's neighbours and temperature (as retrieval's k and temperature)
    vote_temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.anchors_per_label < 1:
            raise VosError("--anchors-per-label must be at least 1.")
        if self.kind not in LOSS_KINDS:
            raise VosError(f"Unknown --loss '{self.kind}'; choose one of: {', '.join(LOSS_KINDS)}.")
        if self.margin < 0:
            raise VosError("--margin must not be negative.")
        if self.vote_k < 1:
            raise VosError("--vote-k must be at least 1.")
        if self.vote_temperature <= 0:
            raise VosError("--vote-temperature must be positive.")


@dataclass(kw_only=True)
class OptimSettings:
    batch_size: int = 4  # samples per process and step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100  # steps of linear warm-up before the cosine decay
    min_lr_ratio: float = 0.02  # the cosine ends at lr * min_lr_ratio
    backbone_lr_scale: float = 0.1  # a fine-tuned backbone learns this much slower than the head

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise VosError("--batch-size must be at least 1.")
        if self.lr <= 0:
            raise VosError("--lr must be positive.")


@dataclass(kw_only=True)
class RunSettings:
    out: Path
    steps: int = 2000  # the length of the learning-rate schedule
    stop_after: int | None = None  # pause after this step (with a checkpoint); --resume goes on
    workers: int = 1  # DataLoader worker processes per training process
    device: str = "auto"  # one process: auto, cpu, cuda, cuda:N
    gpus: str = ""  # "0,1" or "all": one process per GPU
    nproc: int = 1  # processes on the CPU (gloo) when no GPUs are listed
    threads: int | None = None  # torch threads per process (default: cores / processes)
    val_every: int = 500  # 0: validate only at the end
    val_max_size: int = 384
    checkpoint_every: int = 500
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise VosError("--steps must be at least 1.")
        if self.stop_after is not None and self.stop_after < 1:
            raise VosError("--stop-after must be at least 1.")
        if self.nproc < 1:
            raise VosError("--nproc must be at least 1.")
        if self.workers < 0:
            raise VosError("--workers must not be negative.")


@dataclass(kw_only=True)
class TrainSettings:
    data: DataSettings
    run: RunSettings
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    seed: int = 0
    resume: Path | None = None


def _plain(value: Any) -> Any:
    """Dataclass values -> str/int/float/bool/list/dict only, so ``weights_only`` loading accepts them."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def settings_to_dict(settings: TrainSettings) -> dict:
    return _plain(asdict(settings))


def _build(cls: type, raw: dict) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise VosError(f"The checkpoint has unknown settings: {', '.join(sorted(unknown))}.")
    values = {}
    for name, value in raw.items():
        if name in ("root", "out", "resume", "cache_dir"):
            value = None if value is None else Path(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def settings_from_dict(raw: dict) -> TrainSettings:
    """Inverse of :func:`settings_to_dict`."""
    parts = {"data": DataSettings, "run": RunSettings, "model": ModelSettings}
    parts |= {"loss": LossSettings, "optim": OptimSettings}
    values = {name: _build(cls, raw[name]) for name, cls in parts.items()}
    resume = raw.get("resume")
    return TrainSettings(**values, seed=int(raw["seed"]), resume=Path(resume) if resume else None)
