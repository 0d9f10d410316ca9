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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "davis2016-train")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dev-davis")
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out
    lines = []
    for kind in ("JPEGImages", "Annotations"):
        (out / kind / "480p").mkdir(parents=True, exist_ok=True)
        for seq in DEV_SEQUENCES:
            link = out / kind / "480p" / seq
            if not link.exists():
                link.symlink_to(data / kind / "480p" / seq)
    for seq in DEV_SEQUENCES:
        for ann in sorted((data / "Annotations" / "480p" / seq).glob("*.png")):
            lines.append(f"/JPEGImages/480p/{seq}/{ann.stem}.jpg /Annotations/480p/{seq}/{ann.name}")
    (out / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "480p" / "dev.txt").write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(DEV_SEQUENCES)} sequences, {len(lines)} frames")


if __name__ == "__main__":
    main()
