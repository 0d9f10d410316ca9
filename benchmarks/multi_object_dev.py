"""Multi-object dev clips made from the 30 DAVIS 2016 training sequences, and their per-object score.

DAVIS 2016 has one object per sequence; the failures that matter on multi-object footage are a
second object of the same kind close by (identities swap) and objects passing in front of each
other. Each clip here takes a host sequence and pastes into it (trainer/composite.py):

- a look-alike: the host's own object, from another moment of its video, mirrored or not, beside
  it and moving on a path of its own, in front of or behind the host object;
- a distractor of another kind: the object of a second sequence of the same fold, crossing.

With ``--kind same-kind`` the look-alike is instead the object of another sequence of the same
kind and fold (a second person beside a person, a second rider), as on real multi-object footage.
With ``--kind crowd`` a clip holds five objects over up to 80 frames: the host, its own object
from another moment, an object of its kind and that one from another moment, and a crossing
distractor of another kind (the held-out clips hold four dogs and a person, and seven people).

Hosts and donors come from the same cross-validation fold, so each clip is scored with the fold
model that never saw its sequences (benchmarks/cross_validate.py). The clips are 432x240 pixels,
the size of the held-out multi-object clips, and fixed by the seed.

    python benchmarks/multi_object_dev.py make                     # runs/multi-dev, 4 clips a fold
    python benchmarks/multi_object_dev.py make --kind same-kind    # runs/multi-dev-kind, 2 clips a fold
    python benchmarks/multi_object_dev.py make --kind crowd        # runs/multi-dev-crowd, 2 clips a fold
    python benchmarks/multi_object_dev.py eval --data runs/multi-dev-kind
    python benchmarks/multi_object_dev.py eval [--set NAME=VALUE]  # mean J per object, per clip
    python benchmarks/multi_object_dev.py codec --data runs/multi-dev-kind   # runs/multi-dev-kind-h264

``eval`` prints, per clip, J and F of each object (frames 1 to N-2, as DAVIS), and the mean J per
object averaged over the clips (the figure of the held-out multi-object clips).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cross_validate import DEFAULT_DATA, FOLDS, fold_model, fold_settings, parse_value  # noqa: E402
from engine.datasets import read_annotation, read_split, sequence_annotations, sequence_frames  # noqa: E402
from engine.metrics import f_measure, jaccard  # noqa: E402
from trainer.composite import Path as Track  # noqa: E402
from trainer.composite import cut_out, paste  # noqa: E402

SIZE = (432, 240)  # (width, height) of the held-out multi-object clips
FRAMES = 40  # at most this many frames a clip
CLIPS_PER_FOLD = 4
OUT = ROOT / "runs" / "multi-dev"
MIN_VISIBLE = 150  # pixels each object must show on the first (annotated) frame
OUT_SAME_KIND = ROOT / "runs" / "multi-dev-kind"
OUT_CROWD = ROOT / "runs" / "multi-dev-crowd"
CROWD_FRAMES = 80  # the held-out clips have 66 and 80 frames
MIN_VISIBLE_CROWD = 100  # five objects share a 432x240 frame
# Objects of one kind within a fold (the fold model never saw either): people, riders.
SAME_KIND = {
    "f0": [("motocross-bumps", "horsejump-low"), ("horsejump-low", "motocross-bumps")],
    "f1": [("kite-walk", "rollerblade"), ("rollerblade", "kite-walk")],
    "f2": [("breakdance-flare", "lucia"), ("lucia", "scooter-gray")],
    "f3": [("hike", "stroller"), ("surf", "hike")],
    "f4": [("tennis", "hockey"), ("swing", "tennis")],
}


def _load(data: Path, seq: str, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for frame, ann in list(zip(sequence_frames(data, seq), sequence_annotations(data, seq), strict=True))[:frames]:
        image = cv2.cvtColor(cv2.imread(str(frame), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        images.append(cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(read_annotation(ann), SIZE, interpolation=cv2.INTER_NEAREST) > 0)
    return images, masks


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)


def _reflect(value: float, high: float) -> float:
    """Keep a centre inside [0, high] by bouncing off the borders."""
    period = 2 * high
    value = value % period
    return period - value if value > high else value


def _layer(
    images: list[np.ndarray],
    ids: list[np.ndarray],
    source: tuple[list[np.ndarray], list[np.ndarray]],
    offset: int,
    track: Track,
    object_id: int,
    in_front: bool,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paste the object of ``source`` (frames from ``offset`` on, back and forth) along ``track``."""
    src_images, src_masks = source
    n = len(src_images)
    out_images, out_ids = [], []
    for t, (image, frame_ids) in enumerate(zip(images, ids, strict=True)):
        k = (offset + t) % (2 * n - 2) if n > 1 else 0
        k = 2 * n - 2 - k if k >= n else k  # ping-pong through the source
        piece = cut_out(src_images[k], src_masks[k])
        if piece is not None:
            x, y, s = track.at(t)
            x, y = _reflect(x, SIZE[0]), _reflect(y, SIZE[1])
            image, frame_ids = paste(
                image, frame_ids, *piece, centre=(x, y), scale=s, object_id=object_id, in_front=in_front,
                flip=track.flip,
            )  # fmt: skip
        out_images.append(image)
        out_ids.append(frame_ids)
    return out_images, out_ids


def _another_moment(rng: np.random.Generator, n: int) -> int:
    """A frame of an ``n``-frame source from a third of the way on: the object as it looks later."""
    return int(rng.integers(n // 3, max(n // 3 + 1, n)))


def _beside(rng: np.random.Generator, host: tuple[float, float, float, float], mask: np.ndarray) -> tuple[Track, float]:
    """A look-alike's path beside the host (box ``host``) and its size relative to the host's; it is
    about the host's size on the first frame (two dogs, not a dog and its close-up), whatever size
    the object had at the moment it is taken from (``mask``)."""
    hx, hy, hw, hh = host
    _, _, tw, th = _box(mask)
    relative = float(rng.uniform(0.6, 1.0))
    scale = relative * float(np.sqrt(hw * hh / (tw * th)))
    side = rng.choice([-1.0, 1.0])
    tx = hx + side * (0.5 * hw + 0.5 * relative * hw + rng.uniform(-0.2, 0.3) * hw)
    return Track.random(rng, (tx, hy + rng.uniform(-0.15, 0.15) * hh), scale, speed=rng.uniform(0.5, 2.5)), relative


def _crossing(rng: np.random.Generator, mask: np.ndarray) -> tuple[Track, float]:
    """A distractor's path across the frame from one side, and its scale (``mask``: its first frame)."""
    _, _, dw, dh = _box(mask)
    scale = float(min(rng.uniform(0.4, 0.8), 0.6 * SIZE[1] / dh, 0.5 * SIZE[0] / dw))
    start_x = float(rng.choice([0.15, 0.85]) * SIZE[0])
    towards = 1.0 if start_x < SIZE[0] / 2 else -1.0
    track = Track(
        start=(start_x, float(rng.uniform(0.35, 0.75) * SIZE[1])),
        velocity=(towards * float(rng.uniform(2.0, 4.0)), float(rng.uniform(-0.5, 0.5))),
        scale=scale,
        scale_swing=float(rng.uniform(0.0, 0.3)),
        period=float(rng.uniform(40, 90)),
        flip=bool(rng.random() < 0.5),
    )
    return track, scale


def make_crowd_clip(data: Path, host: str, alike: str, donor: str, rng: np.random.Generator) -> tuple[list, list, dict]:
    """Five objects over up to ``CROWD_FRAMES`` frames: the host (1), the host's own object from
    another moment (2), an object of its kind (3) and that one from another moment (4) beside it,
    each on a path of its own, in front of or behind; and an object of another kind crossing (5).
    Several objects of one kind at once, as on the held-out clips (four dogs and a person, seven
    people)."""
    host_src = _load(data, host, 10_000)
    images, masks = host_src[0][:CROWD_FRAMES], host_src[1][:CROWD_FRAMES]
    box = _box(masks[0])
    alike_src, donor_src = _load(data, alike, 10_000), _load(data, donor, 10_000)
    for _ in range(100):
        out_images, out_ids = images, [m.astype(np.uint8) for m in masks]
        placed = []
        for object_id, source in ((2, host_src), (3, alike_src), (4, alike_src)):
            n = len(source[0])
            offset = 0 if object_id == 3 else _another_moment(rng, n)
            if not source[1][offset % n].any():  # the object is out of view then: another placement
                break
            track, relative = _beside(rng, box, source[1][offset % n])
            front = bool(rng.random() < 0.5)
            out_images, out_ids = _layer(out_images, out_ids, source, offset, track, object_id, front)
            placed.append({"id": object_id, "offset": offset, "relative_size": round(relative, 3), "front": front})
        if len(placed) < 3:
            continue
        track, scale = _crossing(rng, donor_src[1][0])
        front = bool(rng.random() < 0.5)
        out_images, out_ids = _layer(out_images, out_ids, donor_src, 0, track, 5, front)
        if all(np.count_nonzero(out_ids[0] == i) >= MIN_VISIBLE_CROWD for i in range(1, 6)):
            info = {"host": host, "alike": alike, "donor": donor, "look_alikes": placed,
                    "donor_scale": round(scale, 3), "donor_front": front, "frames": len(out_images)}  # fmt: skip
            return out_images, out_ids, info
    raise RuntimeError(f"No placement of the pasted objects in {host} left each object visible.")


def make_clip(
    data: Path, host: str, donor: str, rng: np.random.Generator, alike: str | None = None
) -> tuple[list, list, dict]:
    """One clip: host object 1, its look-alike 2, the donor's object 3. The look-alike is the host's
    own object from another moment, or with ``alike`` the object of that sequence (one of the same
    kind: another person beside a person)."""
    host_src = _load(data, host, 10_000)
    images, masks = host_src[0][:FRAMES], host_src[1][:FRAMES]
    hx, hy, hw, hh = _box(masks[0])
    donor_src = _load(data, donor, 10_000)
    alike_src = host_src if alike is None else _load(data, alike, 10_000)
    n_alike = len(alike_src[0])
    for _ in range(50):
        ids = [m.astype(np.uint8) for m in masks]
        twin_offset = _another_moment(rng, n_alike) if alike is None else 0
        twin, relative = _beside(rng, (hx, hy, hw, hh), alike_src[1][twin_offset % n_alike])
        twin_front = bool(rng.random() < 0.5)
        distractor, donor_scale = _crossing(rng, donor_src[1][0])
        donor_front = bool(rng.random() < 0.5)
        out_images, out_ids = _layer(images, ids, alike_src, twin_offset, twin, 2, twin_front)
        out_images, out_ids = _layer(out_images, out_ids, donor_src, 0, distractor, 3, donor_front)
        if all(np.count_nonzero(out_ids[0] == i) >= MIN_VISIBLE for i in (1, 2, 3)):
            info = {
                "host": host, "alike": alike or host, "donor": donor, "twin_front": twin_front,
                "donor_front": donor_front,
                "twin_relative_size": round(relative, 3), "donor_scale": round(donor_scale, 3),
                "frames": len(out_images),
            }  # fmt: skip
            return out_images, out_ids, info
    raise RuntimeError(f"No placement of the pasted objects in {host} left each object visible.")


def _clips(
    fold: str, seqs: tuple[str, ...], rng: np.random.Generator, kind: str
) -> Iterator[tuple[str, str, str | None]]:
    """(host, donor, look-alike or None) of a fold's clips: twins, or another object of the same
    kind. A generator: each donor is drawn after the previous clip was made (the seeded order)."""
    if kind == "twins":
        for h in rng.choice(len(seqs), size=CLIPS_PER_FOLD, replace=False):
            yield seqs[int(h)], seqs[int(rng.choice([i for i in range(len(seqs)) if i != h]))], None
        return
    for host, alike in SAME_KIND[fold]:  # same-kind and crowd
        yield host, str(rng.choice([s for s in seqs if s not in (host, alike)])), alike


def make(data: Path, out: Path, seed: int, kind: str = "twins") -> None:
    from vosctl.masks import write_palette_png
    from vosctl.palette import davis_palette

    rng = np.random.default_rng(seed)
    manifest = {}
    for fold, seqs in FOLDS.items():
        names = []
        for host, donor, alike in _clips(fold, seqs, rng, kind):
            if kind == "crowd":
                images, ids, info = make_crowd_clip(data, host, alike, donor, rng)
            else:
                images, ids, info = make_clip(data, host, donor, rng, alike)
            name = f"{fold}-{host}"
            for folder in ("JPEGImages", "Annotations"):
                (out / folder / "480p" / name).mkdir(parents=True, exist_ok=True)
            for t, (image, frame_ids) in enumerate(zip(images, ids, strict=True)):
                cv2.imwrite(str(out / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"),
                            cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])  # fmt: skip
                write_palette_png(out / "Annotations" / "480p" / name / f"{t:05d}.png", frame_ids, davis_palette())
            manifest[name] = dict(info, fold=fold)
            names.append(name)
            print(f"{name}: {info}", flush=True)
        (out / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
        (out / "ImageSets" / "480p" / f"m{fold}.txt").write_text("\n".join(names) + "\n")
    (out / "clips.json").write_text(json.dumps({"seed": seed, "clips": manifest}, indent=1))


def score_objects(data: Path, results: Path, seq: str) -> dict[int, tuple[float, float]]:
    """Per object id of the first frame: (J, F) means over frames 1 to N-2 (DAVIS 2017 style)."""
    annotations = sequence_annotations(data, seq)
    ids = [int(i) for i in np.unique(read_annotation(annotations[0])) if i]
    scores: dict[int, list[tuple[float, float]]] = {i: [] for i in ids}
    for ann in annotations[1:-1]:
        gt, pred = read_annotation(ann), read_annotation(results / seq / ann.name)
        for i in ids:
            scores[i].append((jaccard(pred == i, gt == i), f_measure(pred == i, gt == i)))
    return {i: (float(np.mean([s[0] for s in v])), float(np.mean([s[1] for s in v]))) for i, v in scores.items()}


def evaluate(data: Path, overrides: dict, folds: list[str], pattern: str | None) -> None:
    from vosctl.eval_run import evaluate_model

    slug = "_".join([data.name, pattern or "folds", *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    out = ROOT / "runs" / "multi-results" / slug.replace("/", "-")
    start = time.time()
    per_clip: dict[str, dict[int, tuple[float, float]]] = {}
    for fold in folds:
        evaluate_model(data=data, split=f"m{fold}", out=out, model_spec=str(fold_model(fold, pattern)),
                       overrides=fold_settings(overrides, fold))  # fmt: skip
        for seq in read_split(data, f"m{fold}"):
            per_clip[seq] = score_objects(data, out, seq)
            objects = "  ".join(f"{i}: J {j:.3f} F {f:.3f}" for i, (j, f) in per_clip[seq].items())
            print(f"{seq:28s} {objects}", flush=True)
    j = np.mean([np.mean([v[0] for v in clip.values()]) for clip in per_clip.values()])
    f = np.mean([np.mean([v[1] for v in clip.values()]) for clip in per_clip.values()])
    print(f"{json.dumps(overrides)} {len(per_clip)} clips: mean J per object {j:.4f} F {f:.4f} "
          f"({time.time() - start:.0f} s)")  # fmt: skip


def make_codec_copy(data: Path, crf: int, out: Path) -> None:
    """A copy of a dev set whose clips went through H.264 at ``crf`` (trainer.codec), as the held-out
    clips reach vosctl as mp4 files; the masks, split files and clips.json are the set's own."""
    import shutil

    from trainer.codec import codec_copy

    codec_copy(data, sorted(p.name for p in (data / "JPEGImages" / "480p").iterdir()), crf, out)
    shutil.copy(data / "clips.json", out / "clips.json")
    print(f"{out}: the clips of {data} through H.264 at CRF {crf}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--data", type=Path, default=DEFAULT_DATA)
    mk.add_argument("--out", type=Path, help=f"Default: {OUT} (twins), {OUT_SAME_KIND} (same kind), {OUT_CROWD}.")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--kind", choices=("twins", "same-kind", "crowd"), default="twins",
                    help="The look-alike: the host's own object (twins) or another object of its kind; crowd: "
                    "five objects, four of one kind.")  # fmt: skip
    codec = sub.add_parser("codec")
    codec.add_argument("--data", type=Path, default=OUT)
    codec.add_argument("--crf", type=int, default=23, help="x264's constant rate factor (23: ffmpeg's default).")
    codec.add_argument("--out", type=Path, help="Default: the set's folder with -h264 appended.")
    ev = sub.add_parser("eval")
    ev.add_argument("--data", type=Path, default=OUT)
    ev.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A session setting.")
    ev.add_argument("--folds", default=",".join(FOLDS))
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--fold-models", metavar="PATTERN", help="Fold model files other than runs/cv/FOLD/model.pt.")
    args = parser.parse_args()
    if args.command == "make":
        out = args.out or {"twins": OUT, "same-kind": OUT_SAME_KIND, "crowd": OUT_CROWD}[args.kind]
        make(args.data, out, args.seed, args.kind)
    elif args.command == "codec":
        make_codec_copy(args.data, args.crf, args.out or args.data.with_name(args.data.name + "-h264"))
    else:
        import torch

        torch.set_num_threads(args.threads)
        overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
        evaluate(args.data, overrides, args.folds.split(","), args.fold_models)


if __name__ == "__main__":
    main()
