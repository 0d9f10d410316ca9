"""The one reader of dataset layouts: DAVIS and YouTube-VOS folders, sparse annotation folders, frame numbers.

``vosctl eval``, ``vosctl batch``, ``vosctl segment --masks-in`` and ``trainer/`` all read datasets
through this module; it sits in engine/ so that trainer/ need not import the CLI package. It reads
file names and annotation PNGs, never videos.

DAVIS (and its split lists)::

    ROOT/JPEGImages/480p/<seq>/<nnnnn>.jpg
    ROOT/Annotations/480p/<seq>/<nnnnn>.png
    ROOT/ImageSets/480p/<split>.txt   DAVIS 2016: "/JPEGImages/480p/<seq>/00000.jpg /Annotations/..."
    ROOT/ImageSets/2016/<split>.txt   DAVIS 2017 release: one sequence name per line

YouTube-VOS: the same without the ``480p`` level (``ROOT/JPEGImages/<seq>/00005.jpg``), the
annotations sparse (each object's first frame). A folder of videos for ``vosctl batch``::

    ROOT/<name>.mp4 + ROOT/<name>.png       a first-frame annotation
    ROOT/<name>.mp4 + ROOT/<name>/*.png     sparse annotations, numbered by decode order

An annotation's frame is the last run of digits in its file name (``00045.png``,
``frame_000045.png``). In a DAVIS or YouTube-VOS layout it names the frame file with that number, so
a folder that keeps every fifth frame still pairs each annotation with its frame; in a sparse
annotation folder beside a video it is the frame's 0-based index in decode order.

Every problem a user can cause (missing list, sequence, frame, unreadable PNG) raises
:class:`engine.errors.VosError` with one sentence naming what is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import VosError

RESOLUTION = "480p"
FRAME_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
_DIGITS = re.compile(r"\d+")


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


# ---- frame numbers ---------------------------------------------------------------------------------


def frame_number(path: Path | str) -> int | None:
    """The last run of digits in a file name's stem (``frame_000045.png`` -> 45), None without one."""
    runs = _DIGITS.findall(Path(path).stem)
    return int(runs[-1]) if runs else None


def frame_numbers(frames: tuple[Path, ...]) -> tuple[int, ...]:
    """The frames' numbers in the video: their names (00000, 00005, ...) when all are numbers, so a
    folder that keeps every n-th frame still gives the true time gaps; else their positions."""
    stems = [p.stem for p in frames]
    if all(stem.isdigit() for stem in stems):
        return tuple(int(stem) for stem in stems)
    return tuple(range(len(stems)))


def sparse_annotations(folder: Path) -> dict[int, Path]:
    """The PNGs of a folder of sparse annotations, by frame number (the last digits of each name).

    A PNG without digits in its name, or two PNGs with the same number, is a :class:`VosError`;
    hidden files and other files are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VosError(f"The annotations folder {folder} does not exist.")
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png" or not path.is_file():
            continue
        number = frame_number(path)
        if number is None:
            raise VosError(f"The annotation {path} has no frame number in its name (e.g. 00045.png).")
        if number in found:
            raise VosError(f"Two annotations for frame {number} in {folder}: {found[number].name} and {path.name}.")
        found[number] = path
    if not found:
        raise VosError(f"The annotations folder {folder} holds no PNG.")
    return found


# ---- whole datasets: DAVIS / YouTube-VOS layouts and folders of videos ------------------------------


@dataclass
class VideoEntry:
    """One video of a dataset: ``source`` (a frames folder or a video file) and its annotation files.

    ``by_name``: annotation numbers name frame files (DAVIS, YouTube-VOS); else they are decode
    indices (a folder of videos). :func:`annotation_frames` pairs them with frame indices.
    """

    name: str
    source: Path
    annotations: dict[int, Path] = field(default_factory=dict)
    by_name: bool = False


def _layout_level(root: Path, top: str) -> Path | None:
    for folder in (root / top / RESOLUTION, root / top):
        if folder.is_dir():
            return folder
    return None


def list_videos(root: Path) -> list[VideoEntry]:
    """Every video under ``root``, by name: a DAVIS / YouTube-VOS layout, else a folder of videos.

    Only the listing can fail here (no such folder, nothing found); a video whose annotations are
    missing or unreadable is listed, and fails alone when :func:`annotation_frames` reads it.
    """
    root = Path(root)
    if not root.is_dir():
        raise VosError(f"The dataset folder {root} does not exist.")
    images = _layout_level(root, "JPEGImages")
    if images is not None:
        annotations = _layout_level(root, "Annotations")
        if annotations is None:
            raise VosError(f"{root} has JPEGImages/ but no Annotations/ folder beside it.")
        entries = []
        for folder in sorted(p for p in images.iterdir() if p.is_dir()):
            masks = annotations / folder.name
            found = {}
            if masks.is_dir():
                found = {frame_number(p): p for p in sorted(masks.glob("*.png")) if frame_number(p) is not None}
            entries.append(VideoEntry(folder.name, folder, found, by_name=True))
    else:
        entries = []
        for video in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
            first, sparse = video.with_suffix(".png"), video.with_suffix("")
            if sparse.is_dir():
                entries.append(VideoEntry(video.stem, video, sparse_or_empty(sparse)))
            else:
                entries.append(VideoEntry(video.stem, video, {0: first} if first.is_file() else {}))
    if not entries:
        raise VosError(
            f"No videos under {root}: expected JPEGImages/[480p/]NAME/ with Annotations/[480p/]NAME/, "
            "or NAME.mp4 files with NAME.png or a folder NAME/ of annotations."
        )
    return entries


def sparse_or_empty(folder: Path) -> dict[int, Path]:
    """:func:`sparse_annotations`, or {} where they cannot be read (the video then fails on its own)."""
    try:
        return sparse_annotations(folder)
    except VosError:
        return {}


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a frames folder, in name order (the decode order of a folder of frames)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())


def annotation_frames(entry: VideoEntry) -> dict[int, Path]:
    """{0-based decode index: annotation PNG} of a listed video; a :class:`VosError` when it has none,
    or when an annotation names a frame that the frames folder does not hold."""
    if not entry.annotations:
        raise VosError(f"The video '{entry.name}' has no annotation.")
    if not entry.by_name:
        return dict(sorted(entry.annotations.items()))
    numbers = {frame_number(p): i for i, p in enumerate(frame_files(entry.source))}
    frames = {}
    for number, path in sorted(entry.annotations.items()):
        if number not in numbers:
            raise VosError(f"The annotation {path} names frame {number}, which {entry.source} does not hold.")
        frames[numbers[number]] = path
    return frames
