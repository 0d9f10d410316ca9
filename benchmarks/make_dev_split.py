"""Make the dev split used for tuning: a DAVIS-layout folder of symlinks with ImageSets/480p/dev.txt.

    python benchmarks/make_dev_split.py [--data ../shared/data/davis2016-train] [--out runs/dev-davis]
    vosctl eval davis16 --data runs/dev-davis --split dev

The dev sequences are held out of training of the shipped model (see trainer's defaults).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEV_SEQUENCES = ("dance-jump", "dog-agility", "drift-turn", "horsejump-low", "motocross-bumps", "soccerball")
ROOT = Path(__file__).resolve().parents[1]


def write_split(data: Path, out: Path, name: str, sequences: tuple[str, ...]) -> int:
    """Link ``sequences`` of the DAVIS root ``data`` into ``out`` and list their frames as split
    ``name`` (ImageSets/480p/NAME.txt); returns the number of frames."""
    data = data.resolve()
    for kind in ("JPEGImages", "Annotations"):
        (out / kind / "480p").mkdir(parents=True, exist_ok=True)
        for seq in sequences:
            link = out / kind / "480p" / seq
            if not link.exists():
                link.symlink_to(data / kind / "480p" / seq)
    lines = [
        f"/JPEGImages/480p/{seq}/{ann.stem}.jpg /Annotations/480p/{seq}/{ann.name}"
        for seq in sequences
        for ann in sorted((data / "Annotations" / "480p" / seq).glob("*.png"))
    ]
    (out / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "480p" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "davis2016-train")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dev-davis")
    args = parser.parse_args()
    frames = write_split(args.data, args.out, "dev", DEV_SEQUENCES)
    print(f"{args.out}: {len(DEV_SEQUENCES)} sequences, {frames} frames")


if __name__ == "__main__":
    main()
