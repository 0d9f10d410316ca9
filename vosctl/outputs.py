"""Where ``vosctl segment`` may write, and writing there without ever losing a file.

The rules (the README's *Outputs* paragraph says the same):

- Outputs never coincide with each other, the input or the mask, and none lies inside another; a masks
  folder never is, or holds, the input, the mask, another output or the current folder.
- A file output replaces an existing file only with ``--overwrite``, and never a folder.
- A masks folder is replaced (with ``--overwrite``) only when it holds nothing but what vosctl wrote
  there: the marker file :data:`MARKER` and frames named ``NNNNN.png`` (a folder of only such frames,
  as written before the marker existed, counts too). An empty folder is used as it is. Any other file
  in it means it is refused, with or without ``--overwrite``.
- Missing parent folders are created, for every output alike; a failed or interrupted run removes the
  ones it created.
- Every output is first written under a temporary name beside it, ``.NAME.vosctl-PID-XXXXXXXX.part``
  (plus the file's suffix), and renamed into place when complete. A run that is killed outright
  (kill -9, power cut) cannot remove its temporaries; the next run writing the same output does: it
  removes the temporaries of that output whose process (PID) is gone, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import VosError
from engine.files import publish
from vosctl.encode import CONTAINERS

# Written into every masks folder: "vosctl wrote this folder, --overwrite may replace it".
MARKER = ".vosctl-masks"
MARKER_TEXT = "Written by vosctl segment: `--overwrite` may replace this folder while it holds only masks.\n"
FRAME_NAME = re.compile(r"\d{5,}\.png")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def default_output(video: Path) -> Path:
    """``clip.mp4`` -> ``clip.vos.mp4`` beside it (a folder of frames -> ``<folder>.vos.mp4``)."""
    video = Path(video)
    if video.is_dir():
        return video.parent / f"{video.name}.vos.mp4"
    suffix = video.suffix if video.suffix.lower() in VIDEO_SUFFIXES else ".mp4"
    return video.with_name(f"{video.stem}.vos{suffix}")


@dataclass(frozen=True)
class Output:
    """One requested output: its ``path`` as given, ``final`` resolved, the ``option`` that named it."""

    path: Path
    final: Path
    option: str
    folder: bool = False

    @property
    def label(self) -> str:
        return f"{self.option} {self.path}"


@dataclass
class OutputPlan:
    """The checked outputs of one run: where each goes and the parent folders still to create."""

    overlay: Output | None = None
    mask_video: Output | None = None
    masks_dir: Output | None = None
    overwrite: bool = False
    missing_parents: list[Path] = field(default_factory=list)  # outermost first

    @property
    def outputs(self) -> list[Output]:
        return [o for o in self.outputs_by_kind() if o is not None]

    def outputs_by_kind(self) -> tuple[Output | None, Output | None, Output | None]:
        """(overlay, mask video, masks folder), None where not asked for."""
        return self.overlay, self.mask_video, self.masks_dir


def holds_only_masks(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but vosctl's marker and ``NNNNN.png`` frames (plain files)."""
    for entry in folder.iterdir():
        if not (entry.is_file() and not entry.is_symlink()):
            return False
        if entry.name != MARKER and not FRAME_NAME.fullmatch(entry.name):
            return False
    return True


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _missing_parents(output: Output) -> list[Path]:
    """The folders above ``output`` that do not exist yet (outermost first); an error if one is a file."""
    missing = []
    parent = output.final.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise VosError(f"{output.label} cannot be written: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK):
        raise VosError(f"{output.label} cannot be written: the folder {parent} is not writable.")
    return missing[::-1]


def plan_outputs(
    *,
    video: Path,
    mask: Path | Sequence[Path],
    output: Path | None,
    overlay: bool,
    masks_dir: Path | None,
    mask_video: Path | None,
    overwrite: bool,
) -> OutputPlan:
    """Check every output against the rules above before anything is written; a :class:`VosError` if one fails."""
    if output is not None and not overlay:
        raise VosError("-o/--output asks for the overlay video that --no-overlay turns off; give one of them.")
    given_output = output is not None
    if output is None and overlay:
        output = default_output(video)

    def make(path: Path | None, option: str, folder: bool = False) -> Output | None:
        return None if path is None else Output(Path(path), Path(path).resolve(), option, folder)

    plan = OutputPlan(
        overlay=make(output, "-o/--output" if given_output else "The overlay video"),
        mask_video=make(mask_video, "--mask-video"),
        masks_dir=make(masks_dir, "--masks-dir", folder=True),
        overwrite=overwrite,
    )
    if not plan.outputs:
        raise VosError("Nothing to write: ask for an overlay video, --masks-dir or --mask-video.")
    masks = [Path(mask)] if isinstance(mask, (str, Path)) else [Path(m) for m in mask]
    inputs = {"the input video": Path(video).resolve()}
    for path in masks:
        inputs.setdefault("the mask" if len(masks) == 1 else f"the mask {path}", path.resolve())
    for out in plan.outputs:
        for what, path in inputs.items():
            if out.final == path:
                raise VosError(f"{out.label} is {what} itself; choose another path.")
            if out.folder and _is_within(path, out.final):
                raise VosError(f"{out.label} holds {what}; give the masks a folder of their own.")
        if out.folder and _is_within(Path.cwd().resolve(), out.final):
            raise VosError(f"{out.label} is, or holds, the current folder; give the masks a folder of their own.")
        for other in plan.outputs:
            if other is out:
                continue
            if other.final == out.final:
                raise VosError(f"{other.label} and {out.label} are the same path; give each output its own.")
            if other.final.is_relative_to(out.final):
                raise VosError(f"{other.label} lies inside {out.label}; give each output its own path.")
    for out in plan.outputs:
        _check_existing(out, overwrite)
    for out in plan.outputs:
        for parent in _missing_parents(out):
            if parent not in plan.missing_parents:
                plan.missing_parents.append(parent)
    plan.missing_parents.sort(key=lambda p: len(p.parts))
    return plan


def _check_existing(out: Output, overwrite: bool) -> None:
    if not out.folder:
        suffix = out.final.suffix.lower()
        if suffix not in CONTAINERS:
            raise VosError(f"{out.label} cannot be written: use one of {', '.join(sorted(CONTAINERS))}.")
    if not out.final.exists() and not out.final.is_symlink():
        return
    if not out.folder:
        if out.final.is_dir():
            raise VosError(f"{out.label} is an existing folder; give the path of a video file.")
        if not overwrite:
            raise VosError(f"{out.label} already exists; pass --overwrite to replace it.")
        return
    if not out.final.is_dir():
        raise VosError(f"{out.label} is a file, not a folder.")
    if not any(out.final.iterdir()):
        return
    if not holds_only_masks(out.final):
        raise VosError(
            f"{out.label} holds files that vosctl did not write, so it is never replaced; choose a new folder."
        )
    if not overwrite:
        raise VosError(f"{out.label} holds the masks of an earlier run; pass --overwrite to replace them.")


# ---- temporary names, found again ----------------------------------------------------------------


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.vosctl-{os.getpid()}-"


def _temp_pattern(final: Path, folder: bool) -> re.Pattern[str]:
    """Names of ``final``'s temporaries: ``.NAME.vosctl-PID-XXXXXXXX.part[.suffix]`` and ``... .old``."""
    suffix = "" if folder else re.escape(final.suffix)
    return re.compile(rf"\.{re.escape(final.name)}\.vosctl-(\d+)-[a-z0-9_]+\.(?:part{suffix}|old)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def remove_stale_temporaries(final: Path, *, folder: bool) -> list[Path]:
    """Remove the temporaries of ``final`` left by runs whose process is gone; returns what was removed."""
    parent = final.parent
    if not parent.is_dir():
        return []
    pattern = _temp_pattern(final, folder)
    removed = []
    for entry in parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


class AtomicOutputs:
    """The outputs of a :class:`OutputPlan`, written under temporary names.

    :meth:`file` / :meth:`folder` give the temporary path of an output, :meth:`commit` renames them
    into place, :meth:`discard` removes them and the parent folders this run created.
    """

    def __init__(self, plan: OutputPlan) -> None:
        self.plan = plan
        self._pending: list[tuple[Path, Output]] = []
        self._created: list[Path] = []

    def start(self) -> None:
        """Remove stale temporaries of these outputs, then create the missing parent folders."""
        for out in self.plan.outputs:
            remove_stale_temporaries(out.final, folder=out.folder)
        for parent in self.plan.missing_parents:
            try:
                parent.mkdir(exist_ok=True)
            except OSError as error:
                raise VosError(f"Cannot create the output folder {parent}.") from error
            self._created.append(parent)

    def _output(self, path: Path) -> Output:
        for out in self.plan.outputs:
            if Path(path) in (out.path, out.final):
                return out
        raise ValueError(f"{path} is not an output of this plan")

    def file(self, path: Path) -> Path:
        out = self._output(path)
        # The container format is guessed from the suffix, so the temporary file keeps it.
        fd, tmp = tempfile.mkstemp(
            prefix=_temp_prefix(out.final), suffix=f".part{out.final.suffix}", dir=out.final.parent
        )
        os.close(fd)
        self._pending.append((Path(tmp), out))
        return Path(tmp)

    def folder(self, path: Path) -> Path:
        out = self._output(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.final), suffix=".part", dir=out.final.parent))
        self._pending.append((tmp, out))
        (tmp / MARKER).write_text(MARKER_TEXT)
        return tmp

    def commit(self) -> None:
        for tmp, out in self._pending:
            if out.folder and out.final.exists():
                self._replace_folder(tmp, out)
            else:
                publish(tmp, out.final)
        self._pending.clear()
        self._created.clear()

    def _replace_folder(self, tmp: Path, out: Output) -> None:
        """Move the old masks aside, put the new ones in place, then delete the old ones file by file."""
        if any(out.final.iterdir()) and not (self.plan.overwrite and holds_only_masks(out.final)):
            raise VosError(f"{out.label} changed during the run and now holds other files; it was left as it was.")
        trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.final), suffix=".old", dir=out.final.parent))
        os.replace(out.final, trash)
        publish(tmp, out.final)
        for entry in trash.iterdir():
            if entry.name == MARKER or FRAME_NAME.fullmatch(entry.name):
                entry.unlink()
        with contextlib.suppress(OSError):
            trash.rmdir()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self._pending.clear()
        for parent in reversed(self._created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        self._created.clear()
