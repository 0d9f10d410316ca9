"""Cached backbone features: train a head on a frozen backbone without running the backbone each step.

With a frozen backbone the backbone's forward pass is most of a training step's cost on a CPU, and
it gives the same features every epoch. :class:`FeatureCacheSet` computes them once per frame, at
the size the engine's session feeds the network (longer side ``max_size``, INTER_AREA resize), so
the head trains on exactly the features it meets at inference. The price is augmentation: what
is left is a random window (a fixed fraction of the frame, in whole cells of the coarsest level,
which also shifts the (x, y) coordinates the head sees) and a horizontal flip of the feature maps,
an approximation of the features of a flipped frame, and (``paste``) another sequence's object
pasted beside the host's as a distractor (trainer.feature_paste), and (``pseudo``) pseudo-videos:
a frame and random warps of it (trainer.pseudo_video), whose features are cached beside the
frames'. Labels are each grid cell's majority label, as the session labels its reference frame.

With a ``store`` folder, each sequence's features are kept there and reused by later runs (the
file is keyed by backbone, weights file name and size, and checked against the frames and masks it
was computed from: their resolved paths, sizes and modification times, so another copy of a
sequence under the same name, or a frame or mask rewritten, is computed afresh).

Samples are drawn as in :class:`trainer.data.DavisTrainingSet`: a pure function of
(seed, rank, index); frame 0 of a sample is the anchor frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from engine.datasets import read_annotation
from engine.embedder import processing_size
from engine.errors import VosError
from engine.factory import atomic_save
from engine.model import OUTPUT_STRIDE, TIME_HORIZON, EmbeddingModel
from trainer.data import IGNORE, Sequence, _remap_ids, file_stamp
from trainer.feature_paste import paste_distractor
from trainer.pseudo_video import view_rng, warp_views


def grid_labels(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64 labels (IGNORE allowed) -> (gh, gw): the majority label of each cell."""
    shifted = torch.from_numpy(mask).long() - IGNORE
    one_hot = F.one_hot(shifted, int(shifted.max()) + 1).permute(2, 0, 1)[None].float()
    return F.adaptive_avg_pool2d(one_hot, grid)[0].argmax(0) + IGNORE


class FeatureCacheSet(Dataset):
    """Sample ``index`` -> ``features`` [(F, C_l, h_l, w_l) per level], ``labels`` (F, gh, gw), ``t`` (F,)."""

    def __init__(
        self,
        sequences: list[Sequence],
        model: EmbeddingModel,
        *,
        frames_per_sample: int,
        max_size: int,
        every: int,
        seed: int,
        rank: int = 0,
        device: torch.device | str = "cpu",
        batch: int = 4,
        crop: float = 1.0,
        flip: bool = False,
        store: Path | None = None,
        paste: float = 0.0,
        paste_objects: int = 1,
        pseudo: float = 0.0,
        pseudo_views: int = 2,
        pseudo_every: int = 3,
    ) -> None:
        if not sequences:
            raise VosError("The training set needs at least one sequence.")
        self.frames_per_sample = frames_per_sample
        self.seed = seed
        self.rank = rank
        self.names = [seq.name for seq in sequences]
        # Per sequence: frame numbers kept, their features (per level) and grid labels.
        self.indices: list[list[int]] = []
        self.features: list[list[torch.Tensor]] = []
        self.labels: list[torch.Tensor] = []
        shapes = set()
        for seq in sequences:
            keep = list(range(0, len(seq.frames), max(1, every)))
            feats, labels = self._load_or_embed(seq, keep, model, max_size, device, batch, store)
            shapes.add(tuple(labels.shape[1:]))
            self.indices.append([seq.numbers[i] for i in keep])
            self.features.append(feats)
            self.labels.append(labels)
        if len(shapes) > 1:
            raise VosError("Cached features need frames of one size; train without --cache-features.")
        self.crop, self.flip, self.paste, self.paste_objects = crop, flip, paste, paste_objects
        # Per sequence: the positions (in ``indices``) of the warped frames, and their views'
        # features and labels, ``pseudo_views`` consecutive rows per frame.
        self.pseudo, self.pseudo_views = pseudo, pseudo_views
        self.pseudo_bases: list[list[int]] = []
        self.pseudo_features: list[list[torch.Tensor]] = []
        self.pseudo_labels: list[torch.Tensor] = []
        if pseudo > 0:
            for seq in sequences:
                keep = list(range(0, len(seq.frames), max(1, every)))
                bases = list(range(0, len(keep), max(1, pseudo_every)))
                feats, labels = self._load_or_embed_views(seq, keep, bases, model, max_size, device, batch, store)
                self.pseudo_bases.append(bases)
                self.pseudo_features.append(feats)
                self.pseudo_labels.append(labels)
        self.strides = [level.stride for level in model.backbone.levels]
        gh, gw = shapes.pop()
        tiles = all(
            f.shape[-2:] == (gh * OUTPUT_STRIDE // s, gw * OUTPUT_STRIDE // s)
            for f, s in zip(self.features[0], self.strides, strict=True)
        )
        if crop < 1.0 and not tiles:
            raise VosError("Cropping cached features needs a backbone whose feature maps tile the frame exactly.")

    def _load_or_embed(self, seq, keep, model, max_size, device, batch, store: Path | None):
        """Features and labels of ``seq``, from ``store`` when an earlier run left them there."""
        every = keep[1] - keep[0] if len(keep) > 1 else 1
        return _stored(
            _store_folder(store, model, max_size) / f"{seq.name}-every{every}.pt" if store is not None else None,
            _sources(seq, keep),
            lambda: self._embed_sequence(seq, keep, model, max_size, device, batch),
        )

    def _load_or_embed_views(self, seq, keep, bases, model, max_size, device, batch, store: Path | None):
        """The pseudo-video views of the cached frames ``keep[b]`` for b in ``bases``, from
        ``store`` when kept there."""
        every = keep[1] - keep[0] if len(keep) > 1 else 1
        name = f"{seq.name}-every{every}-views{self.pseudo_views}-seed{self.seed}.pt"
        return _stored(
            _store_folder(store, model, max_size) / "pseudo" / name if store is not None else None,
            _sources(seq, keep) + [f"bases {bases}"],
            lambda: self._embed_views(seq, keep, bases, model, max_size, device, batch),
        )

    def _embed_views(self, seq, keep, bases, model, max_size, device, batch):
        """Features and grid labels of ``pseudo_views`` warps of each frame ``keep[b]`` (consecutive
        rows), labelled as the cached frames are (ids numbered over all of ``keep``)."""
        labels = _remap_ids(np.stack([read_annotation(seq.masks[i]) for i in keep]))[bases]
        frames = [keep[b] for b in bases]
        images, masks = [], []
        for i, label in zip(frames, labels, strict=True):
            frame = _read_resized(seq.frames[i], max_size)
            label = cv2.resize(label.astype(np.int16), frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            rng = view_rng(self.seed, seq.name, seq.numbers[i])
            for image, mask in warp_views(frame, label.astype(np.int64), rng, self.pseudo_views):
                images.append(torch.from_numpy(image).permute(2, 0, 1))
                masks.append(mask)
        return _backbone_features(model, images, device, batch), _grid_labels_of(images, masks)

    @staticmethod
    def _embed_sequence(seq, keep, model, max_size, device, batch):
        images = [torch.from_numpy(_read_resized(seq.frames[i], max_size)).permute(2, 0, 1) for i in keep]
        labels = _remap_ids(np.stack([read_annotation(seq.masks[i]) for i in keep]))
        return _backbone_features(model, images, device, batch), _grid_labels_of(images, labels)

    def __len__(self) -> int:
        return 2**62  # samples are drawn by index from an endless stream

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        if self.pseudo > 0 and rng.random() < self.pseudo:
            s, features, labels, frames = self._pseudo_sample(rng)
        else:  # the draws of a recipe without pseudo-videos, unchanged
            s, features, labels, frames = self._video_sample(rng)
        f = self.frames_per_sample
        if self.paste > 0 and len(self.indices) > 1 and rng.random() < self.paste:
            others = [i for i in range(len(self.indices)) if i != s]
            # One donor, or 1..paste_objects of them from distinct sequences (each a label of its own).
            if self.paste_objects == 1:  # the draws of the shipped recipe, unchanged
                donors = [int(rng.choice(others))]
            else:
                count = int(rng.integers(1, min(self.paste_objects, len(others)) + 1))
                donors = [int(d) for d in rng.choice(others, size=count, replace=False)]
            for d in donors:
                donor = rng.choice(len(self.indices[d]), size=f, replace=len(self.indices[d]) < f)
                features, labels = paste_distractor(
                    features, labels, [level[donor].float() for level in self.features[d]], self.labels[d][donor],
                    self.strides, rng,
                )  # fmt: skip
        if self.crop < 1.0:
            features, labels = self._crop(features, labels, rng)
        if self.flip and rng.random() < 0.5:
            features, labels = [f.flip(-1) for f in features], labels.flip(-1)
        return {
            "features": features,
            "labels": labels,
            "t": torch.tensor((frames - frames.min()) / TIME_HORIZON, dtype=torch.float32),
        }

    def _video_sample(self, rng: np.random.Generator):
        """``frames_per_sample`` cached frames of one sequence, the anchor frame first."""
        s = int(rng.integers(len(self.indices)))
        n, f = len(self.indices[s]), self.frames_per_sample
        picks = rng.choice(n, size=f, replace=n < f)
        anchor = int(rng.integers(f))
        order = [int(picks[anchor])] + [int(p) for i, p in enumerate(picks) if i != anchor]
        frames = np.asarray([self.indices[s][i] for i in order])
        return s, [level[order].float() for level in self.features[s]], self.labels[s][order], frames

    def _pseudo_sample(self, rng: np.random.Generator):
        """A pseudo-video: one frame and its warped views (``frames_per_sample`` of the
        ``pseudo_views + 1``, repeated if fewer), any of them the anchor, at random times 0-30
        frames apart (the warps stand for that much motion)."""
        s = int(rng.integers(len(self.pseudo_bases)))
        b = int(rng.integers(len(self.pseudo_bases[s])))
        v, f = self.pseudo_views, self.frames_per_sample
        picks = [int(p) for p in rng.choice(v + 1, size=f, replace=v + 1 < f)]  # 0: the frame itself
        base = self.pseudo_bases[s][b]

        def rows(level_of_frames: torch.Tensor, level_of_views: torch.Tensor) -> torch.Tensor:
            return torch.stack([level_of_frames[base] if p == 0 else level_of_views[b * v + p - 1] for p in picks])

        features = [
            rows(a, w).float() for a, w in zip(self.features[s], self.pseudo_features[s], strict=True)
        ]  # fmt: skip
        labels = rows(self.labels[s], self.pseudo_labels[s])
        return s, features, labels, rng.integers(0, 31, size=f)

    def _crop(self, features: list[torch.Tensor], labels: torch.Tensor, rng: np.random.Generator):
        """One window, a fixed fraction of the frame, in whole cells of the coarsest level."""
        coarse = max(self.strides)
        hc, wc = (n * OUTPUT_STRIDE // coarse for n in labels.shape[-2:])
        kh, kw = max(1, round(hc * self.crop)), max(1, round(wc * self.crop))
        y0, x0 = int(rng.integers(hc - kh + 1)), int(rng.integers(wc - kw + 1))

        def window(x: torch.Tensor, stride: int) -> torch.Tensor:
            r = coarse // stride
            return x[..., y0 * r : (y0 + kh) * r, x0 * r : (x0 + kw) * r]

        return [window(f, s) for f, s in zip(features, self.strides, strict=True)], window(labels, OUTPUT_STRIDE)


def _read_resized(path: Path, max_size: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB at the size the session feeds the network (INTER_AREA)."""
    with Image.open(path) as image:
        frame = np.array(image.convert("RGB"))
    h, w = processing_size(frame.shape[0], frame.shape[1], max_size)
    if (h, w) != frame.shape[:2]:
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return frame


@torch.inference_mode()
def _backbone_features(model: EmbeddingModel, images: list[torch.Tensor], device, batch: int) -> list[torch.Tensor]:
    """[(N, C_l, h_l, w_l)] float16 per level of the frozen backbone, for (3, h, w) uint8 images."""
    backbone = model.backbone
    levels: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch):
        chunk = torch.stack(images[start : start + batch]).to(device).float()
        out = backbone(backbone.normalisation.apply(chunk))
        levels.append([f.half().cpu() for f in out])
    return [torch.cat(parts) for parts in zip(*levels, strict=True)]


def _grid_labels_of(images: list[torch.Tensor], labels) -> torch.Tensor:
    """(N, gh, gw) grid labels of full-size labels, the grid that of the (3, h, w) images."""
    grid = (images[0].shape[1] // OUTPUT_STRIDE, images[0].shape[2] // OUTPUT_STRIDE)
    return torch.stack([grid_labels(np.asarray(m), grid) for m in labels])


def _store_folder(store: Path, model: EmbeddingModel, max_size: int) -> Path:
    """The store's folder for this backbone, weights file and size."""
    config = model.config
    weights = Path(config.backbone_weights).stem if config.backbone_weights else "default"
    return Path(store) / f"{config.backbone}-{weights}-{max_size}"


def _sources(seq, keep: list[int]) -> list[str]:
    """What the features and labels of frames ``keep`` of ``seq`` were computed from: each frame's
    and mask's resolved path, size and modification time."""
    return [f"{file_stamp(seq.frames[i])} {file_stamp(seq.masks[i])}" for i in keep]


def _stored(path: Path | None, names: list[str], compute):
    """(features, labels) from ``path`` when it holds those computed from ``names`` (:func:`_sources`);
    else computed, and kept there (no path: computed only)."""
    if path is None:
        return compute()
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("frames") == names:
            return payload["features"], payload["labels"]
    features, labels = compute()
    atomic_save({"frames": names, "features": features, "labels": labels}, path)
    return features, labels
