"""The bad-input corpus, outputs: every way an output can clash with the inputs, another output or a folder
the user owns, the one rule for missing folders, and the temporaries a killed run leaves.

Each case runs in a folder holding ``clip.mp4`` and ``mask.png`` (and whatever the case adds) and asserts
the exit code, the message, that nothing is left behind (hidden files included) and that no file changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from vosctl.outputs import MARKER

from .corpus import FAST, assert_clean_failure, bear_frames, cut_mp4, digests, listing


def earlier_run(folder: Path, *, marker: bool = True, extra: str | None = None) -> Path:
    """A masks folder as an earlier run left it (optionally without the marker, or with a file of the user's)."""
    folder.mkdir(parents=True)
    for index in range(9):  # more frames than the clip: the replaced folder must not keep the extra ones
        Image.new("P", (8, 8)).save(folder / f"{index:05d}.png")
    if marker:
        (folder / MARKER).write_text("vosctl\n")
    if extra is not None:
        (folder / extra).write_text("mine\n")
    return folder


def touch(path: Path, text: str = "mine\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# case -> (prepare(folder) -> arguments after the mask, part of the message). The input is folder/clip.mp4.
Prepare = Callable[[Path], list]
FAILING: dict[str, tuple[Prepare, str]] = {
    "-o is the input": (lambda f: ["-o", f / "clip.mp4", "--overwrite"], "is the input video itself"),
    "-o is the input by another spelling": (
        lambda f: ["-o", f / "sub" / ".." / "clip.mp4", "--overwrite"],
        "is the input video itself",
    ),
    "-o is the mask": (lambda f: ["-o", f / "mask.png", "--overwrite"], "is the mask itself"),
    "--mask-video is the input": (lambda f: ["--mask-video", f / "clip.mp4", "--overwrite"], "input video itself"),
    "--masks-dir is the mask": (lambda f: ["--masks-dir", f / "mask.png", "--overwrite"], "is the mask itself"),
    "--masks-dir holds the input two levels down": (
        lambda f: ["--masks-dir", f.parent, "--overwrite", "--no-overlay"],
        "holds the input video",
    ),
    "-o and --mask-video the same": (lambda f: ["-o", f / "a.mp4", "--mask-video", f / "a.mp4"], "same path"),
    "--mask-video inside --masks-dir": (
        lambda f: ["--masks-dir", f / "m", "--mask-video", f / "m" / "v.mkv", "--no-overlay"],
        "lies inside",
    ),
    "-o inside --masks-dir of an earlier run": (
        lambda f: ["--masks-dir", earlier_run(f / "m"), "-o", f / "m" / "o.mp4", "--overwrite"],
        "lies inside",
    ),
    "-o is an existing folder": (lambda f: ["-o", (f / "o.mp4").mkdir() or f / "o.mp4"], "existing folder"),
    "-o is an existing folder, --overwrite": (
        lambda f: ["-o", (f / "o.mp4").mkdir() or f / "o.mp4", "--overwrite"],
        "existing folder",
    ),
    "-o exists": (lambda f: ["-o", touch(f / "o.mp4")], "pass --overwrite"),
    "default overlay exists": (lambda f: [touch(f / "clip.vos.mp4") and "--masks-dir", f / "m"], "pass --overwrite"),
    "--mask-video exists": (lambda f: ["--mask-video", touch(f / "m.mkv"), "--no-overlay"], "pass --overwrite"),
    "--masks-dir is a file": (lambda f: ["--masks-dir", touch(f / "m"), "--overwrite"], "is a file, not a folder"),
    "--masks-dir of an earlier run": (lambda f: ["--masks-dir", earlier_run(f / "m"), "--no-overlay"], "--overwrite"),
    "--masks-dir with a file of the user's": (
        lambda f: ["--masks-dir", earlier_run(f / "m", extra="notes.txt"), "--overwrite", "--no-overlay"],
        "did not write",
    ),
    "--masks-dir with a hidden file": (
        lambda f: ["--masks-dir", earlier_run(f / "m", extra=".DS_Store"), "--overwrite", "--no-overlay"],
        "did not write",
    ),
    "--masks-dir with a subfolder": (
        lambda f: ["--masks-dir", (earlier_run(f / "m") / "sub").mkdir() or f / "m", "--overwrite", "--no-overlay"],
        "did not write",
    ),
    "output folder is a file": (lambda f: ["-o", touch(f / "afile") / "o.mp4"], "is a file, not a folder"),
    "masks folder's parent is a file": (lambda f: ["--masks-dir", touch(f / "afile") / "m"], "is a file"),
    "-o of unknown type": (lambda f: ["-o", f / "o.gif"], "cannot be written"),
    "--mask-video of unknown type": (lambda f: ["--mask-video", f / "m.png", "--no-overlay"], "cannot be written"),
    "nothing to write": (lambda f: ["--no-overlay"], "Nothing to write"),
    "-o with --no-overlay": (lambda f: ["-o", f / "o.mp4", "--no-overlay"], "--no-overlay"),
}
SUCCEEDING: dict[str, tuple[Prepare, list[str]]] = {
    "every output": (lambda f: ["-o", f / "o.mp4", "--mask-video", f / "m.mkv", "--masks-dir", f / "m"], ["o.mp4"]),
    "-o exists, --overwrite": (lambda f: ["-o", touch(f / "o.mp4"), "--overwrite"], ["o.mp4"]),
    "--masks-dir of an earlier run, --overwrite": (
        lambda f: ["--masks-dir", earlier_run(f / "m"), "--overwrite", "--no-overlay"],
        ["m"],
    ),
    "--masks-dir of a marker-less earlier run, --overwrite": (
        lambda f: ["--masks-dir", earlier_run(f / "m", marker=False), "--overwrite", "--no-overlay"],
        ["m"],
    ),
    "--masks-dir empty": (lambda f: ["--masks-dir", (f / "m").mkdir() or f / "m", "--no-overlay"], ["m"]),
    "-o in missing folders": (lambda f: ["-o", f / "new" / "sub" / "o.mp4"], ["new/sub/o.mp4"]),
    "--masks-dir in missing folders": (lambda f: ["--masks-dir", f / "a" / "b" / "m", "--no-overlay"], ["a/b/m"]),
    "--mask-video in missing folders": (lambda f: ["--mask-video", f / "x" / "m.mkv", "--no-overlay"], ["x/m.mkv"]),
}


@pytest.fixture
def folder(tmp_path, bear_clip) -> Path:
    work = tmp_path / "work" / "clip"
    work.mkdir(parents=True)
    shutil.copy(bear_clip["clip"], work / "clip.mp4")
    shutil.copy(bear_clip["mask"], work / "mask.png")
    return work


def segment(run_cli, folder: Path, args: list, model: Path):
    return run_cli(["segment", folder / "clip.mp4", "--mask", folder / "mask.png", *args, "--model", model, *FAST])


@pytest.mark.parametrize("name", list(FAILING))
def test_output_conflict_is_refused(name, folder, tmp_path, run_cli, tiny_model_file):
    prepare, expected = FAILING[name]
    args = prepare(folder)
    before, hashes = listing(tmp_path), digests(tmp_path)
    assert_clean_failure(segment(run_cli, folder, args, tiny_model_file), contains=expected)
    assert listing(tmp_path) == before and digests(tmp_path) == hashes, "nothing written, nothing changed"


@pytest.mark.parametrize("name", list(SUCCEEDING))
def test_output_is_written(name, folder, tmp_path, run_cli, tiny_model_file):
    prepare, written = SUCCEEDING[name]
    args = prepare(folder)
    inputs = {k: v for k, v in digests(folder).items() if k in ("clip.mp4", "mask.png")}
    result = segment(run_cli, folder, args, tiny_model_file)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in digests(folder).items() if k in inputs} == inputs
    for path in written:
        assert (folder / path).exists(), path
    if "--masks-dir" in args:
        masks = Path(args[args.index("--masks-dir") + 1])
        assert sorted(p.name for p in masks.iterdir()) == [MARKER] + [f"{i:05d}.png" for i in range(6)]
    hidden = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".*") if p.name != MARKER]
    assert hidden == [], "no temporary file left"


def test_failed_run_removes_the_folders_it_created(folder, tmp_path, run_cli, tiny_model_file, encode):
    cut_mp4(folder / "clip.mp4", bear_frames(6) * 5, encode, at_packet=True)  # fails after its last frame
    before = listing(tmp_path)
    args = ["-o", folder / "new" / "a" / "o.mp4", "--masks-dir", folder / "new" / "b" / "m"]
    assert_clean_failure(segment(run_cli, folder, args, tiny_model_file), contains="truncated", bar=True)
    assert listing(tmp_path) == before


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_these_outputs_are_removed_and_nothing_else(folder, run_cli, tiny_model_file):
    dead, alive = dead_pid(), os.getpid()
    stale = [
        touch(folder / f".o.mp4.vosctl-{dead}-abcd1234.part.mp4"),
        touch(folder / f".m.mkv.vosctl-{dead}-x_y9z000.part.mkv"),
        touch(folder / f".m.vosctl-{dead}-qwertyui.part" / "00000.png"),
        touch(folder / f".m.vosctl-{dead}-zxcvbnm0.old" / "00001.png"),
    ]
    kept = [
        touch(folder / f".o.mp4.vosctl-{alive}-abcd1234.part.mp4"),  # a run still going: never touched
        touch(folder / f".other.mp4.vosctl-{dead}-abcd1234.part.mp4"),  # not an output of this run
        touch(folder / f".o.mp4.vosctl-{dead}-abcd1234.part.mkv"),  # not this output's suffix
        touch(folder / ".o.mp4.abcd1234.part.mp4"),  # not vosctl's naming
        touch(folder / ".m.part" / "notes.txt"),
    ]
    args = ["-o", folder / "o.mp4", "--mask-video", folder / "m.mkv", "--masks-dir", folder / "m"]
    result = segment(run_cli, folder, args, tiny_model_file)
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale[:2]), "the dead run's temporary files are gone"
    assert not any(p.parent.exists() for p in stale[2:]), "and its temporary folders"
    assert all(p.read_text() == "mine\n" for p in kept)


def test_masks_dir_is_the_input_frames_folder(tmp_path, bear_clip, run_cli, tiny_model_file):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, rgb in enumerate(bear_frames(3)):
        Image.fromarray(rgb).save(frames / f"{index:05d}.png")
    shutil.copy(bear_clip["mask"], tmp_path / "mask.png")
    before, hashes = listing(tmp_path), digests(tmp_path)
    args = ["segment", frames, "--mask", tmp_path / "mask.png", "--masks-dir", frames, "--overwrite"]
    assert_clean_failure(run_cli([*args, "--model", tiny_model_file, *FAST]), contains="input video")
    assert listing(tmp_path) == before and digests(tmp_path) == hashes
