"""`vosctl eval davis16` end to end on two real sequences, with a small split list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.session import SessionConfig

SEQUENCES = ("dog-agility", "soccerball")
FRAMES = 12
# Small frames keep the runs short; accuracy is not what these tests check.
FAST = ["--model", "imagenet", "--max-size", "256", "--device", "cpu"]


@pytest.fixture
def davis_split(davis_root: Path, tmp_path: Path) -> Path:
    """A DAVIS-layout root whose `dev` split lists the first FRAMES frames of two real sequences."""
    root = tmp_path / "davis"
    for kind, suffix in (("JPEGImages", "jpg"), ("Annotations", "png")):
        for seq in SEQUENCES:
            (root / kind / "480p" / seq).mkdir(parents=True)
            for i in range(FRAMES):
                name = f"{i:05d}.{suffix}"
                (root / kind / "480p" / seq / name).symlink_to(davis_root / kind / "480p" / seq / name)
    lines = [
        f"/JPEGImages/480p/{seq}/{i:05d}.jpg /Annotations/480p/{seq}/{i:05d}.png"
        for seq in SEQUENCES
        for i in range(FRAMES)
    ]
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "dev.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_runs_scores_and_reports(run_cli, davis_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_cli(["eval", "davis16", "--data", davis_split, "--split", "dev", "--out", out, *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    for key in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean"):
        assert -1.0 <= report[key] <= 1.0
    assert set(report["sequences"]) == set(SEQUENCES)
    assert 0.4 < report["J_mean"] < 1.0 and 0.25 < report["F_mean"] < 1.0
    assert report["JF_mean"] == pytest.approx((report["J_mean"] + report["F_mean"]) / 2)
    assert report["seconds_per_frame"] > 0
    assert (out / "results.csv").is_file() and (out / "results.png").is_file()
    # DAVIS results layout: every frame, binary 0/255 for single-object sequences.
    import cv2

    masks = sorted((out / "dog-agility").glob("*.png"))
    assert [m.name for m in masks] == [f"{i:05d}.png" for i in range(FRAMES)]
    values = set(cv2.imread(str(masks[5]), cv2.IMREAD_UNCHANGED).ravel().tolist())
    assert values <= {0, 255} and 255 in values

    # Scoring the written folder without a model gives the same figures.
    scored = run_cli(
        ["eval", "davis16", "--data", davis_split, "--split", "dev", "--results", out, "--out", tmp_path / "scored"]
    )
    assert scored.exit_code == 0, scored.output
    rescored = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert rescored["J_mean"] == pytest.approx(report["J_mean"], abs=1e-12)
    assert rescored["F_mean"] == pytest.approx(report["F_mean"], abs=1e-12)

    # Resume: same model and settings -> nothing recomputed (the masks keep their times).
    stamp = masks[5].stat().st_mtime_ns
    again = run_cli(["eval", "davis16", "--data", davis_split, "--split", "dev", "--out", out, "--resume", *FAST])
    assert again.exit_code == 0, again.output
    assert masks[5].stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["J_mean"] == pytest.approx(report["J_mean"])
    # Different settings never mix in: the sequence is recomputed.
    other = run_cli(
        [
            "eval",
            "davis16",
            "--data",
            davis_split,
            "--split",
            "dev",
            "--out",
            out,
            "--resume",
            "--model",
            "imagenet",
            "--max-size",
            "224",
            "--device",
            "cpu",
        ]
    )
    assert other.exit_code == 0, other.output
    assert masks[5].stat().st_mtime_ns != stamp


def test_eval_nproc_matches_single_process(run_cli, davis_split: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(["eval", "davis16", "--data", davis_split, "--split", "dev", "--out", one, *FAST]).exit_code == 0
    result = run_cli(["eval", "davis16", "--data", davis_split, "--split", "dev", "--out", two, "--nproc", "2", *FAST])
    assert result.exit_code == 0, result.output
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    for seq in SEQUENCES:
        assert a["sequences"][seq]["J"] == b["sequences"][seq]["J"]
        assert a["sequences"][seq]["F"] == b["sequences"][seq]["F"]


def test_eval_errors_name_what_is_missing(run_cli, davis_split: Path, tmp_path: Path) -> None:
    missing_split = run_cli(["eval", "davis16", "--data", davis_split, "--split", "nope", "--out", tmp_path / "o"])
    assert missing_split.exit_code == 1 and "nope" in missing_split.output
    (davis_split / "ImageSets" / "480p" / "empty.txt").write_text("\n")
    empty = run_cli(["eval", "davis16", "--data", davis_split, "--split", "empty", "--out", tmp_path / "o"])
    assert empty.exit_code == 1 and "Traceback" not in empty.output
    lacking = tmp_path / "lacking"
    (lacking / "dog-agility").mkdir(parents=True)
    result = run_cli(["eval", "davis16", "--data", davis_split, "--split", "dev", "--results", lacking])
    assert result.exit_code == 1 and "soccerball" in result.output or "dog-agility" in result.output
    no_root = run_cli(["eval", "davis16", "--data", tmp_path / "absent", "--out", tmp_path / "o", *FAST])
    assert no_root.exit_code == 1 and "absent" in no_root.output


def test_the_resume_fingerprint_follows_the_refiner_weights_and_the_engine_code(tmp_path, monkeypatch):
    """Results of another refiner file (retrained in place) or of another version of the engine are
    computed again, not taken for the same run."""
    from vosctl import eval_run

    refiner = tmp_path / "refiner.pt"
    refiner.write_bytes(b"weights one")
    config = SessionConfig(refiner_file=str(refiner))
    first = eval_run.fingerprint("imagenet", config)
    assert eval_run.fingerprint("imagenet", config) == first
    refiner.write_bytes(b"weights two")
    assert eval_run.fingerprint("imagenet", config) != first
    second = eval_run.fingerprint("imagenet", config)
    monkeypatch.setattr(eval_run, "code_digest", lambda: b"another engine")
    assert eval_run.fingerprint("imagenet", config) != second
