"""Reading a dataset in the DAVIS layout (frames, annotations, split lists).

Two layouts are understood, both at 480p::

    ROOT/JPEGImages/480p/<seq>/<nnnnn>.jpg
    ROOT/Annotations/480p/<seq>/<nnnnn>.png
    ROOT/ImageSets/480p/<split>.txt   DAVIS 2016: "/JPEGImages/480p/<seq>/00000.jpg /Annotations/..."
    ROOT/ImageSets/2016/<split>.txt   DAVIS 2017 release: one sequence name per line

Every problem a user can cause (missing list, sequence, frame, unreadable PNG) raises
:class:`engine.errors.VosError` with one sentence naming what is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import VosError

RESOLUTION = "480p"


def split_file(root: Path, split: str) -> Path:
    """Path of the list file of ``split``: ``ImageSets/480p`` first, then ``ImageSets/2016``."""
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise VosError(f"The split name {split!r} is not a plain name such as 'train' or 'val'.")
    candidates = [
        root / "ImageSets" / RESOLUTION / f"{split}.txt",
        root / "ImageSets" / "2016" / f"{split}.txt",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise VosError(
        f"No list of the '{split}' split under {root}: expected ImageSets/{RESOLUTION}/{split}.txt "
        f"or ImageSets/2016/{split}.txt."
    )


def _sequence_of(token: str) -> str:
    # "/JPEGImages/480p/bear/00000.jpg" names its sequence in the parent folder; a bare token
    # (DAVIS 2017 lists) is the sequence itself.
    if "/" in token:
        return Path(token).parent.name
    return token


def read_split(root: Path, split: str) -> list[str]:
    """Sequence names of a split, in order of first appearance, without duplicates.

    Args:
        root: dataset root (the folder holding ``JPEGImages``, ``Annotations``, ``ImageSets``).
        split: split name, e.g. ``"train"`` or ``"val"``.
    """
    path = split_file(Path(root), split)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VosError(f"The split list {path} cannot be read: {exc}.") from None
    seen: dict[str, None] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        name = _sequence_of(tokens[0])
        if name:
            seen.setdefault(name, None)
    if not seen:
        raise VosError(f"The split list {path} names no sequences.")
    return list(seen)


def _listing(folder: Path, pattern: str, seq: str, what: str) -> list[Path]:
    if not folder.is_dir():
        raise VosError(f"Sequence '{seq}' has no {what} folder: {folder} does not exist.")
    files = sorted(folder.glob(pattern))
    if not files:
        raise VosError(f"Sequence '{seq}' has no {what}: {folder} holds no {pattern} file.")
    return files


def sequence_frames(root: Path, seq: str) -> list[Path]:
    """Sorted ``JPEGImages/480p/<seq>/*.jpg`` of one sequence (at least one, else VosError)."""
    return _listing(Path(root) / "JPEGImages" / RESOLUTION / seq, "*.jpg", seq, "frames")


def sequence_annotations(root: Path, seq: str) -> list[Path]:
    """Sorted ``Annotations/480p/<seq>/*.png`` of one sequence (at least one, else VosError)."""
    return _listing(Path(root) / "Annotations" / RESOLUTION / seq, "*.png", seq, "annotations")


def read_annotation(path: Path) -> np.ndarray:
    """Read a mask PNG as ``(H, W)`` uint8 object ids (0 = background).

    * palette (``P``) PNGs, as written by DAVIS 2017 and most methods: the palette indices;
    * grey PNGs (``L``, ``LA``, ``1``, 16-bit): the grey values, except that a mask using only
      0 and 255 (DAVIS 2016 ground truth) is read as 0/1; the alpha channel is ignored;
    * colour PNGs (``RGB``, ``RGBA``): binary, 1 wherever a colour channel is non-zero.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.array(img)
    except FileNotFoundError:
        raise VosError(f"The mask {path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise VosError(f"The mask {path} cannot be read as an image: {exc}.") from None

    if mode == "P":
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return np.any(arr[..., :3] != 0, axis=-1).astype(np.uint8)
    if mode == "LA":
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise VosError(f"The mask {path} has an unsupported image mode {mode!r}.")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.size and int(arr.max()) > 255:
        raise VosError(f"The mask {path} holds values above 255, which are not object ids.")
    arr = arr.astype(np.uint8)
    if not np.any((arr != 0) & (arr != 255)):
        # 0/255 binary masks: 255 is the object, not DAVIS 2017's "void" label.
        arr = arr // 255
    return arr
