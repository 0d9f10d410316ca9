"""Training samples from a folder in the DAVIS layout.

    ROOT/JPEGImages/480p/<seq>/<nnnnn>.jpg
    ROOT/Annotations/480p/<seq>/<nnnnn>.png   grey 0/255 (one object) or palette ids (several)

A sample is ``frames_per_sample`` frames of one video, anywhere in it (the reference frame of a
session can be far from the frame being segmented): the first returned frame gives the anchors,
the others the pool of candidate neighbours. Frames and masks are augmented together, with one
draw of random scale, crop, flip and colour jitter for the whole sample, so the frames keep their
relative positions, which the (x, y, t) coordinates of the head rely on.

Every sample is a pure function of (seed, rank, index): the same batches come out whatever the
number of loader workers, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from engine.datasets import RESOLUTION, frame_numbers, read_annotation
from engine.errors import VosError
from engine.model import OUTPUT_STRIDE, TIME_HORIZON

IGNORE = -1  # label of padding and of DAVIS 2017's "void" (255) pixels
VOID_ID = 255
# Crops whose anchor frame shows a single label teach nothing; redraw a few times.
_CROP_ATTEMPTS = 4


@dataclass(frozen=True)
class Sequence:
    """One video: frame paths and the mask of each, in time order."""

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]
    numbers: tuple[int, ...]  # each frame's number in the video: what the training times count


def list_sequences(root: Path) -> list[str]:
    """Names of the sequences under ``root`` that have both frames and annotations."""
    root = Path(root)
    images = root / "JPEGImages" / RESOLUTION
    if not root.is_dir():
        raise VosError(f"The training data folder {root} does not exist.")
    if not images.is_dir():
        raise VosError(f"{root} is not in the DAVIS layout: {images} does not exist.")
    names = [d.name for d in sorted(images.iterdir()) if (root / "Annotations" / RESOLUTION / d.name).is_dir()]
    if not names:
        raise VosError(f"{root} holds no sequence with both JPEGImages/{RESOLUTION} and Annotations/{RESOLUTION}.")
    return names


def load_sequence(root: Path, name: str) -> Sequence:
    """The annotated frames of ``name`` (frames without a mask are left out)."""
    images = Path(root) / "JPEGImages" / RESOLUTION / name
    annotations = Path(root) / "Annotations" / RESOLUTION / name
    masks = {p.stem: p for p in annotations.glob("*.png")}
    frames = [p for p in sorted(images.glob("*.jpg")) if p.stem in masks]
    if not frames:
        raise VosError(f"Sequence '{name}' has no frame with a mask under {root}.")
    return Sequence(name, tuple(frames), tuple(masks[p.stem] for p in frames), frame_numbers(tuple(frames)))


def split_sequences(
    root: Path, sequences: tuple[str, ...], val_sequences: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """(training, validation) names: the given ones, checked, or every sequence but the validation ones."""
    available = list_sequences(root)
    unknown = [s for s in (*sequences, *val_sequences) if s not in available]
    if unknown:
        raise VosError(f"Sequence '{unknown[0]}' is not under {root}.")
    both = sorted(set(sequences) & set(val_sequences))
    if both:
        raise VosError(f"Sequence '{both[0]}' is listed for both training and validation.")
    train = list(sequences) or [s for s in available if s not in val_sequences]
    if not train:
        raise VosError(f"No sequence under {root} is left for training after the validation ones.")
    return train, list(val_sequences)


def labels_to_grid(labels: torch.Tensor, stride: int = OUTPUT_STRIDE) -> torch.Tensor:
    """(F, H, W) labels (IGNORE allowed) -> (F, H/stride, W/stride): the majority label of each cell."""
    shifted = labels.long() - IGNORE  # IGNORE -> 0, so one_hot sees non-negative classes
    one_hot = F.one_hot(shifted, int(shifted.max()) + 1).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(one_hot, stride).argmax(1) + IGNORE


def file_stamp(path: Path) -> str:
    """A file's resolved path, size and modification time: what tells a kept result of it is stale."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except OSError as error:  # PIL's UnidentifiedImageError is one
        raise VosError(f"The frame {path} is not a readable image.") from error


def _remap_ids(masks: np.ndarray) -> np.ndarray:
    """(F, H, W) uint8 object ids -> int64 labels: 0 background, 1..K objects, IGNORE for void."""
    lut = np.full(256, IGNORE, dtype=np.int64)
    ids = [int(i) for i in np.unique(masks) if i not in (0, VOID_ID)]
    lut[0] = 0
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[masks]


class DavisTrainingSet(Dataset):
    """Sample ``index`` -> ``images`` (F, 3, crop, crop) uint8 RGB, ``labels`` (F, crop/8, crop/8)
    int64 on the stride-8 grid, ``t`` (F,) normalised times; frame 0 is the anchor frame."""

    def __init__(
        self,
        sequences: list[Sequence],
        *,
        crop: int,
        frames_per_sample: int,
        scale: tuple[float, float],
        jitter: float,
        seed: int,
        rank: int = 0,
    ) -> None:
        if not sequences:
            raise VosError("The training set needs at least one sequence.")
        self.sequences = sequences
        self.frames_per_sample = frames_per_sample
        self.seed = seed
        self.rank = rank
        self.crop = crop
        self.scale = scale
        self.transform = v2.Compose(
            [
                v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 10),
            ]
        )

    def __len__(self) -> int:
        return 2**62  # samples are drawn by index from an endless stream

    def _pick_frames(self, rng: np.random.Generator) -> tuple[Sequence, list[int]]:
        seq = self.sequences[int(rng.integers(len(self.sequences)))]
        n = len(seq.frames)
        f = self.frames_per_sample
        picks = rng.choice(n, size=f, replace=n < f)
        anchor = int(rng.integers(f))
        order = [int(picks[anchor])] + [int(p) for i, p in enumerate(picks) if i != anchor]
        return seq, order

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        seq, order = self._pick_frames(rng)
        images = np.stack([_read_rgb(seq.frames[i]) for i in order])
        masks = np.stack([read_annotation(seq.masks[i]) for i in order])
        if masks.shape[1:] != images.shape[1:3]:
            raise VosError(f"Sequence '{seq.name}' has masks of another size than its frames.")
        labels = _remap_ids(masks)
        # One scale for the whole sample, relative to the 480p frame.
        factor = float(rng.uniform(*self.scale))
        size = [max(1, round(s * factor)) for s in images.shape[1:3]]
        image_t = tv_tensors.Image(torch.from_numpy(images).permute(0, 3, 1, 2))
        mask_t = tv_tensors.Mask(torch.from_numpy(labels))
        image_t, mask_t = v2.functional.resize(image_t, size), v2.functional.resize(mask_t, size)
        with torch.random.fork_rng(devices=[]):
            # torchvision draws from torch's global generator; fork it so samples stay pure.
            torch.manual_seed(int(rng.integers(2**31)))
            for _ in range(_CROP_ATTEMPTS):
                out_image, out_mask = self.transform(image_t, mask_t)
                anchor = out_mask[0]
                if len(torch.unique(anchor[anchor != IGNORE])) >= 2:
                    break
        numbers = np.asarray([seq.numbers[i] for i in order])
        times = (numbers - numbers.min()) / TIME_HORIZON
        return {
            "images": out_image.as_subclass(torch.Tensor).contiguous(),
            "labels": labels_to_grid(out_mask.as_subclass(torch.Tensor)),
            "t": torch.tensor(times, dtype=torch.float32),
        }


def make_loader(
    dataset: DavisTrainingSet, *, batch_size: int, first_step: int, steps: int, workers: int, pin: bool
) -> DataLoader:
    """Batches for steps ``first_step .. steps - 1``: batch ``s`` holds samples ``s*B .. s*B + B - 1``.

    Workers are spawned, not forked: a forked child inherits the parent's threads' locks (OpenMP,
    FFmpeg codec threads of PyAV objects awaiting garbage collection) and can hang on them.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=range(first_step * batch_size, steps * batch_size),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context="spawn" if workers > 0 else None,
    )
