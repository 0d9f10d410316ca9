"""Atomic file output: write beside the destination, then rename over it.

Temporary files come from ``tempfile.mkstemp`` (unique, in the
destination's folder so the rename never crosses file systems), which make them private to their
owner; :func:`publish` gives them the permissions any new file or folder gets under the umask.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def temp_beside(final: Path, suffix: str = ".tmp") -> Path:
    """An empty, uniquely named file in ``final``'s folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` (a file, or a folder whose files were written normally) over ``final``.

    It gets the usual permissions of a new file (0644 under umask 022) or folder (0755).
    """
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())
    os.replace(tmp, final)


def write_atomic(final: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file beside ``final``, then it replaces ``final``.

    A failure (or Ctrl-C) removes the temporary file: never a half-written ``final``.
    """
    tmp = temp_beside(final)
    try:
        write(tmp)
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
