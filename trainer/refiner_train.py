"""Training of the learned boundary refiner (engine.mask_refiner): ``vosctl train-refiner``.

The refiner sees what the session gives it: an object's probabilities on the stride-8 grid of the
network's input, upsampled to the frame. Such inputs are simulated from the ground truth, so the
refiner needs no embedding model and no propagation pass, and a fold of the cross-validation can
train its own on its 24 sequences in minutes:

1. the object's mask is shifted by a pixel or two and scaled by a few percent (the coarse labels
   of a later frame lag and drift),
2. averaged over square cells of 7 to 11 pixels (the grid of a 768-wide input on a 480p frame is
   8.9 pixels) and sharpened like the k-NN votes (a random gain on the cell's fraction),
3. corrupted at random: cells near the boundary relabelled, a false blob beside the object, a hole,
4. upsampled bilinearly to the crop.

With ``coarse_dir`` (``--coarse-dir``; benchmarks/coarse_maps.py writes one), a share of the samples
(``coarse_share``) instead take a frame's real coarse probabilities: the stride-8 grid a model that
never saw the sequence gave it, upsampled like the session does. They hold the errors no simulation
above draws: a look-alike's blob, a thin part lost, a frame carried along a wrong flow.

The target is the unshifted mask at full resolution; the loss is the binary cross-entropy, weighted
up in the band where the input is unsure. Crops are mostly centred on the boundary. Every sample is
a pure function of (seed, step), as in the embedding's training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.datasets import read_annotation
from engine.errors import VosError
from engine.mask_refiner import RefinerConfig, build_refiner_net, save_refiner
from trainer.codec import through_codec
from trainer.data import _read_rgb, list_sequences, load_sequence

# The recipe's frames' random scale before cropping and the simulated grid's cell sides (pixels of
# the scaled frame, inclusive): the cells those of the 768 grid on 480p frames. The scale reaches
# down to 0.4 (was 0.75), so the refiner also sees objects as small as on the multi-object clips
# and boundaries at a coarser scale: CV J&F +0.09 / +0.12 with seed 0 / 1 fold models (20 / 10
# sequences better / worse with each); the multi-object dev clips did not move (-0.10 to +0.10).
# README, thirty-fourth round.
SCALE = (0.4, 1.25)
CELLS = (7, 11)


@dataclass(frozen=True)
class RefinerTrainSettings:
    data: Path
    out: Path
    sequences: tuple[str, ...] = ()  # empty: every sequence under ``data``
    steps: int = 1200
    batch: int = 8
    crop: int = 224
    lr: float = 1e-3
    seed: int = 0
    every: int = 2  # every n-th frame of each sequence is a training frame
    threads: int | None = None
    config: RefinerConfig = RefinerConfig()
    codec_crf: int | None = None  # train on the frames as H.264 at this CRF leaves them (trainer.codec)
    scale: tuple[float, float] = SCALE  # of the stored frames
    cells: tuple[int, int] = CELLS
    # Real coarse probabilities (benchmarks/coarse_maps.py: SEQ.pt, one (K + 1, gh, gw) grid a frame)
    # and the share of the samples that take them instead of a simulated input.
    coarse_dir: Path | None = None
    coarse_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise VosError(f"--scale needs 0 < MIN <= MAX, not {self.scale}.")
        if not 1 <= self.cells[0] <= self.cells[1]:
            raise VosError(f"--cells needs 1 <= MIN <= MAX, not {self.cells}.")
        if not 0.0 <= self.coarse_share <= 1.0:
            raise VosError(f"--coarse-share must be within [0, 1], not {self.coarse_share}.")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8 object ids, 255 void
    # A model's grid probabilities of this frame, (K + 1, gh, gw), and the channel of each object id
    # (the session's slots: the first frame's ids in ascending order); None: simulated inputs only.
    coarse: torch.Tensor | None = None
    channels: dict[int, int] | None = None


def read_coarse(folder: Path, name: str, frames: int) -> list[torch.Tensor]:
    """The grids of ``folder/name.pt``, one per frame of the sequence."""
    file = Path(folder) / f"{name}.pt"
    if not file.is_file():
        raise VosError(f"{file} does not exist: make the coarse maps of '{name}' first (benchmarks/coarse_maps.py).")
    grids = torch.load(file)
    if len(grids) != frames:
        raise VosError(f"{file} holds {len(grids)} frames; the sequence has {frames}.")
    return grids


def load_frames(
    data: Path,
    names: list[str],
    every: int,
    codec: tuple[int, Path] | None = None,
    coarse_dir: Path | None = None,
) -> list[Frame]:
    """Every ``every``-th frame of each sequence with its mask; with ``codec`` (crf, folder), the
    frames as H.264 at that CRF leaves them, the decoded copies kept in ``folder``; with
    ``coarse_dir``, each frame's real coarse probabilities (:func:`read_coarse`)."""
    frames = []
    for name in names:
        seq = load_sequence(data, name)
        if codec is not None:
            seq = through_codec(seq, codec[0], codec[1] / name)
        grids = read_coarse(coarse_dir, name, len(seq.frames)) if coarse_dir is not None else None
        channels = None
        if grids is not None:
            first = read_annotation(seq.masks[0])
            channels = {i: c for c, i in enumerate(sorted(int(i) for i in np.unique(first) if i not in (0, 255)), 1)}
        for i in range(0, len(seq.frames), max(1, every)):
            coarse = grids[i] if grids is not None else None
            frames.append(Frame(_read_rgb(seq.frames[i]), read_annotation(seq.masks[i]), coarse, channels))
    if not frames:
        raise VosError("The refiner's training set has no frame.")
    return frames


def _object_mask(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, np.ndarray] | None:
    """(id, (H, W) float32 {0, 1} mask) of an object of the frame chosen at random; None: none."""
    ids = [int(i) for i in np.unique(mask) if i not in (0, 255)]
    if not ids:
        return None
    chosen = ids[rng.integers(len(ids))]
    return chosen, (mask == chosen).astype(np.float32)


def _real_coarse(frame: Frame, object_id: int, size: tuple[int, int]) -> torch.Tensor | None:
    """(H, W) the object's channel of the frame's coarse grid upsampled to ``size`` (bilinear, as
    the session hands it to the refiner); None when the frame has none for that object."""
    channel = frame.channels.get(object_id) if frame.channels is not None else None
    if frame.coarse is None or channel is None or channel >= len(frame.coarse):
        return None
    grid = frame.coarse[None, channel : channel + 1].float()
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0]


def _crop_box(mask: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop: centred near a boundary pixel three times in four."""
    h, w = mask.shape
    edge = mask != np.roll(mask, 1, axis=0)
    edge |= mask != np.roll(mask, 1, axis=1)
    ys, xs = np.nonzero(edge[1:, 1:])
    if len(ys) and rng.random() < 0.75:
        i = rng.integers(len(ys))
        cy, cx = (
            ys[i] + 1 + rng.integers(-size // 4, size // 4 + 1),
            xs[i] + 1 + rng.integers(-size // 4, size // 4 + 1),
        )
    else:
        cy, cx = rng.integers(h), rng.integers(w)
    return int(np.clip(cy - size // 2, 0, h - size)), int(np.clip(cx - size // 2, 0, w - size))


def simulate_coarse(mask: torch.Tensor, rng: np.random.Generator, cells: tuple[int, int] = CELLS) -> torch.Tensor:
    """(H, W) float {0, 1} ground truth -> (H, W) probabilities like an upsampled stride-8 prediction
    whose cells are ``cells`` pixels (inclusive range)."""
    h, w = mask.shape
    m = mask[None, None]
    # 1. lag and drift: a small shift and scale
    scale = 1.0 + rng.normal(0, 0.03)
    dx, dy = rng.normal(0, 2.0) / w * 2, rng.normal(0, 2.0) / h * 2
    theta = torch.tensor([[scale, 0, dx], [0, scale, dy]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    m = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # 2. cell fractions, sharpened like the votes
    cell = int(rng.integers(cells[0], cells[1] + 1))
    gh, gw = max(1, round(h / cell)), max(1, round(w / cell))
    frac = F.adaptive_avg_pool2d(m, (gh, gw))[0, 0]
    gain = rng.uniform(4.0, 20.0)
    p = torch.sigmoid(gain * (frac - 0.5 + rng.normal(0, 0.1)))
    # 3. corruptions on the grid
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    unsure = (frac > 0.02) & (frac < 0.98)
    if rng.random() < 0.5 and unsure.any():
        flip = unsure & (torch.rand(gh, gw, generator=g) < rng.uniform(0.1, 0.4))
        p = torch.where(flip, torch.rand(gh, gw, generator=g), p)
    for kind in ("blob", "hole"):
        if rng.random() < 0.2:
            cy, cx = rng.integers(gh), rng.integers(gw)
            r = rng.uniform(0.7, 2.5)
            yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            bump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) * rng.uniform(0.5, 1.0)
            p = torch.maximum(p, bump) if kind == "blob" else torch.minimum(p, 1 - bump)
    # 4. back to the crop
    return F.interpolate(p[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def make_batch(
    frames: list[Frame],
    *,
    batch: int,
    crop: int,
    seed: int,
    step: int,
    scale: tuple[float, float] = SCALE,
    cells: tuple[int, int] = CELLS,
    coarse_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (B, 3, crop, crop) float in [0, 255], coarse (B, 1, crop, crop), target (B, 1, crop, crop)):
    frames scaled at random within ``scale``, coarse inputs of ``cells``-pixel cells, or, for a
    ``coarse_share`` of the frames that hold real ones, those."""
    rng = np.random.default_rng([seed, step])
    images, coarse, target = [], [], []
    while len(images) < batch:
        frame = frames[rng.integers(len(frames))]
        chosen = _object_mask(frame.mask, rng)
        if chosen is None:
            continue
        object_id, mask = chosen
        # Drawn only where real inputs can be taken, so the samples of a run without them stay those
        # of the recipe before them.
        real = frame.coarse is not None and coarse_share > 0 and rng.random() < coarse_share
        s = rng.uniform(*scale)
        h, w = mask.shape
        size = (max(crop, round(h * s)), max(crop, round(w * s)))
        image = torch.from_numpy(frame.image).permute(2, 0, 1)[None].float()
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0]
        m = F.interpolate(torch.from_numpy(mask)[None, None], size=size, mode="nearest")[0, 0]
        given = _real_coarse(frame, object_id, size) if real else None
        y, x = _crop_box(m.numpy() > 0.5, crop, rng)
        image, m = image[:, y : y + crop, x : x + crop], m[y : y + crop, x : x + crop]
        if given is not None:
            given = given[y : y + crop, x : x + crop]
        if rng.random() < 0.5:
            image, m = image.flip(-1), m.flip(-1)
            given = given.flip(-1) if given is not None else None
        images.append(image)
        target.append(m[None])
        coarse.append((given if given is not None else simulate_coarse(m, rng, cells))[None])
    return torch.stack(images), torch.stack(coarse), torch.stack(target)


def refiner_loss(logits: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, five times the weight where the coarse input is unsure."""
    weight = 1.0 + 4.0 * ((coarse - 0.5).abs() < 0.45).float()
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


def train_refiner(*, settings: RefinerTrainSettings, log=print) -> Path:
    """Train a refiner and write it to ``settings.out / refiner.pt``; returns that path."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    names = list(settings.sequences) or list_sequences(settings.data)
    codec = None
    if settings.codec_crf is not None:
        codec = (settings.codec_crf, Path(settings.out) / f"codec-crf{settings.codec_crf}")
    frames = load_frames(settings.data, names, settings.every, codec, settings.coarse_dir)
    log(f"{len(frames)} frames of {len(names)} sequences")
    torch.manual_seed(settings.seed)
    net = build_refiner_net(settings.config)
    params = [p for p in net.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, settings.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    net.train()
    net.encoder.eval()
    start, running, count = time.time(), 0.0, 0
    for step in range(settings.steps):
        images, coarse, target = make_batch(
            frames,
            batch=settings.batch,
            crop=settings.crop,
            seed=settings.seed,
            step=step,
            scale=settings.scale,
            cells=settings.cells,
            coarse_share=settings.coarse_share,
        )
        logits = net(images, torch.logit(coarse.clamp(1e-6, 1 - 1e-6)))
        loss = refiner_loss(logits, coarse, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running, count = running + float(loss.detach()), count + 1
        if (step + 1) % 50 == 0 or step + 1 == settings.steps:
            log(f"step {step + 1}/{settings.steps} loss {running / count:.4f} ({time.time() - start:.0f} s)")
            running, count = 0.0, 0
    net.eval()
    path = Path(settings.out) / "refiner.pt"
    save_refiner(net, path)
    return path
