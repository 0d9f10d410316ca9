"""vosctl against Cutie-small (random weights) on the same frames, in the same run, on the CPU.

    python benchmarks/bench_peer.py [--video examples/bear.mp4] [--mask examples/bear.png] [--frames N]
                                    [--threads 2] [--max-size PX] [--preset P] [--full-precision]

Needs the optional extra: ``pip install -e '.[peer]'`` (rf-cutie, hydra-core). Cutie is built from its
own config (``eval_config`` with ``model=small``, as ``cutie.utils.get_default_model`` composes it) with
random weights: its speed does not depend on them, and nothing is downloaded (the ImageNet ResNet
initialisation Cutie asks for is switched off; any attempt to fetch weights raises).

Three figures, each timed from the first frame to the last, model construction excluded, no warm-up:

* vosctl engine: ``VideoSession.step`` + ``to_ids`` over frames already decoded in memory;
* vosctl end to end: ``vosctl.pipeline.segment_file`` as ``vosctl segment --masks-dir`` runs it
  (PyAV decoding, engine, palette PNGs and the overlay video written); with ``--frames`` below
  the video's length it runs on a re-encoded (libx264) copy of the first N frames;
* Cutie-small engine: ``InferenceCore.step`` + ``output_prob_to_mask`` over the same decoded frames,
  float32, under ``torch.inference_mode()``, at Cutie's default internal size (its ``max_internal_size``).

The primary ratio is engine against engine (vosctl / Cutie); end to end against Cutie's engine is printed too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vosctl.threads import compute_threads, configure_threads  # noqa: E402

configure_threads()  # as the CLI does, before torch loads (for both tools alike)

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.factory import build_model  # noqa: E402
from engine.session import VideoSession, processing_size, session_config_for  # noqa: E402
from vosctl.masks import fit_mask, read_mask  # noqa: E402
from vosctl.pipeline import overlay_preset_for, segment_file  # noqa: E402
from vosctl.video import Frame, open_source  # noqa: E402

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
PEER_HINT = "pip install -e '.[peer]'"


@dataclass
class Timing:
    frames: int
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time (all threads): less swayed by other jobs on a shared machine

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


# ---- inputs ------------------------------------------------------------------------------------
def decode_frames(video: Path, limit: int | None) -> list[np.ndarray]:
    """The first ``limit`` frames (all when None) as (H, W, 3) uint8 RGB, decoded the CLI's way."""
    frames: list[np.ndarray] = []
    with open_source(video) as source:
        for item in source.items():
            if isinstance(item, Frame):
                frames.append(item.image)
                if limit is not None and len(frames) >= limit:
                    break
    if not frames:
        raise SystemExit(f"{video} has no frames.")
    return frames


def truncated_copy(frames: list[np.ndarray], rate: int, path: Path) -> Path:
    """Write ``frames`` to an H.264 file (libx264, yuv420p), for the end-to-end run on N frames."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_length(video: Path) -> tuple[int | None, int]:
    """(frame count from the container or None, frame rate rounded) of a video file."""
    with open_source(video) as source:
        return source.frame_count, round(float(source.fps))


def cpu_flags() -> str:
    """The flags among CPU_FLAGS that /proc/cpuinfo lists, and those it does not."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    have = [f for f in CPU_FLAGS if f in present]
    lack = [f for f in CPU_FLAGS if f not in present]
    return f"{', '.join(have) or 'none of ' + '/'.join(CPU_FLAGS)}" + (f" (no {', '.join(lack)})" if lack else "")


# ---- vosctl ------------------------------------------------------------------------------------
def time_vosctl_engine(
    frames: list[np.ndarray], mask: np.ndarray, preset: str | None, settings: dict
) -> tuple[Timing, str]:
    """VideoSession over decoded frames; returns the timing and the size the network sees."""
    device = torch.device("cpu")
    model = build_model(None, device)
    config = session_config_for(model, preset=preset, **settings)
    session = VideoSession(model, config, device=device)
    cpu, start = time.process_time(), time.perf_counter()
    session.step(frames[0], mask)
    for frame in frames[1:]:
        session.to_ids(session.step(frame))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    h, w = processing_size(*frames[0].shape[:2], config.max_size)
    return Timing(len(frames), seconds, cpu), f"{w}x{h} (max_size {config.max_size}, half {config.half})"


def time_vosctl_pipeline(video: Path, mask: Path, preset: str | None, settings: dict, workdir: Path) -> Timing:
    """``segment_file`` as ``vosctl segment CLIP --mask M --masks-dir DIR`` runs it: palette PNGs
    and the overlay video (on by default), with the CLI's split of the threads between the network
    and the engine (vosctl.threads.compute_threads)."""
    device = torch.device("cpu")
    budget = torch.get_num_threads()
    torch.set_num_threads(compute_threads(budget))
    model = build_model(None, device)
    cpu = time.process_time()
    try:
        result = segment_file(
            video=video,
            mask=mask,
            model=model,
            config=session_config_for(model, preset=preset, **settings),
            device=device,
            output=workdir / "overlay.mp4",
            masks_dir=workdir / "masks",
            overlay_preset=overlay_preset_for(preset),
            overwrite=True,
        )
    finally:
        torch.set_num_threads(budget)
    return Timing(result.frames, result.seconds, time.process_time() - cpu)


# ---- Cutie -------------------------------------------------------------------------------------
def _no_download(*_args, **_kwargs):
    raise RuntimeError("bench_peer: Cutie tried to download weights; this benchmark uses random weights only.")


def build_cutie():
    """Cutie-small with random weights from its own config, and that config; never downloads anything."""
    try:
        from cutie.inference.inference_core import InferenceCore  # noqa: F401
        from cutie.inference.utils.args_utils import get_dataset_cfg
        from cutie.model import big_modules
        from cutie.model.cutie import CUTIE
        from cutie.model.utils import resnet
        from hydra import compose, initialize_config_module
        from omegaconf import open_dict
    except ImportError as error:
        raise SystemExit(f"Cutie is not installed ({error}); install the optional extra: {PEER_HINT}") from error

    with initialize_config_module(config_module="cutie.config", version_base="1.3.2"):
        cfg = compose(config_name="eval_config", overrides=["model=small"])
    with open_dict(cfg):
        get_dataset_cfg(cfg)  # lifts the default dataset's mem_every etc. to the top level, as eval does

    # Cutie's encoders start from ImageNet ResNets fetched with model_zoo.load_url: build them unloaded.
    resnet.model_zoo = type("NoZoo", (), {"load_url": staticmethod(_no_download)})
    if big_modules.resnet is not resnet:
        raise SystemExit("bench_peer: unexpected Cutie layout (big_modules.resnet); cannot disable its downloads.")
    originals = resnet.resnet18, resnet.resnet50
    resnet.resnet18 = lambda pretrained=True, **kw: originals[0](pretrained=False, **kw)
    resnet.resnet50 = lambda pretrained=True, **kw: originals[1](pretrained=False, **kw)
    try:
        network = CUTIE(cfg).eval()
    finally:
        resnet.resnet18, resnet.resnet50 = originals
    return network, cfg


def cutie_internal_size(height: int, width: int, max_internal_size: int) -> str:
    """The size Cutie's InferenceCore.step processes (its resize rule, then padding to a multiple of 16)."""
    h, w = height, width
    if 0 < max_internal_size < min(h, w):
        h, w = int(h / min(height, width) * max_internal_size), int(w / min(height, width) * max_internal_size)
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    return f"{w}x{h} padded to {pw}x{ph} (max_internal_size {max_internal_size})"


def time_cutie(frames: list[np.ndarray], mask: np.ndarray) -> tuple[Timing, str]:
    """Cutie-small's InferenceCore over decoded frames, float32, first frame given the mask."""
    from cutie.inference.inference_core import InferenceCore

    network, cfg = build_cutie()
    processor = InferenceCore(network, cfg=cfg)
    objects = [int(i) for i in np.unique(mask) if i != 0]
    mask_tensor = torch.from_numpy(mask.astype(np.int64))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.autocast(enabled=False) inside Cutie
        cpu, start = time.process_time(), time.perf_counter()
        for index, frame in enumerate(frames):
            image = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255)
            given = mask_tensor if index == 0 else None
            probs = processor.step(image, given, objects=objects if index == 0 else None)
            processor.output_prob_to_mask(probs)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    size = cutie_internal_size(*frames[0].shape[:2], cfg.max_internal_size)
    return Timing(len(frames), seconds, cpu), f"{size}, mem_every {cfg.mem_every}, long-term {cfg.use_long_term}"


# ---- main --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "examples" / "bear.mp4")
    parser.add_argument("--mask", type=Path, default=ROOT / "examples" / "bear.png")
    parser.add_argument("--frames", type=int, default=None, help="first N frames only (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    parser.add_argument("--max-size", type=int, default=None, help="vosctl's --max-size (default: the model's)")
    parser.add_argument("--preset", default=None, help="vosctl's --preset (default: balanced)")
    parser.add_argument("--full-precision", action="store_true", help="vosctl in float32 (the reference), "
                        "not bfloat16 where the CPU has it")  # fmt: skip
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.frames is not None and args.frames < 2:
        raise SystemExit("--frames must be at least 2.")
    torch.set_num_threads(args.threads)
    frames = decode_frames(args.video, args.frames)
    height, width = frames[0].shape[:2]
    mask = fit_mask(read_mask(args.mask), height, width).ids
    print(f"frames {len(frames)} at {width}x{height}, {torch.get_num_threads()} threads, CPU flags: {cpu_flags()}")

    settings = {"max_size": args.max_size, "half": False if args.full_precision else None}
    vos_engine, vos_size = time_vosctl_engine(frames, mask, args.preset, settings)
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        workdir = Path(tmp)
        count, rate = video_length(args.video) if args.video.is_file() else (None, 24)
        video = args.video
        if args.frames is not None and (count is None or args.frames < count):
            video = truncated_copy(frames, rate, workdir / "first.mp4")
        vos_e2e = time_vosctl_pipeline(video, args.mask, args.preset, settings, workdir)
    cutie, cutie_size = time_cutie(frames, mask)

    print(f"vosctl network input {vos_size}; Cutie-small internal size {cutie_size}")
    print(
        f"vosctl engine {vos_engine.fps:.2f} fps | vosctl end to end (mask PNGs) {vos_e2e.fps:.2f} fps"
        f" ({vos_e2e.frames} frames) | Cutie-small engine {cutie.fps:.2f} fps"
        f" | ratio engine {vos_engine.fps / cutie.fps:.2f}x, end-to-end {vos_e2e.fps / cutie.fps:.2f}x"
    )
    per_frame = {"vosctl engine": vos_engine, "vosctl end to end": vos_e2e, "Cutie-small engine": cutie}
    cpu = " | ".join(f"{name} {t.cpu_seconds / t.frames:.2f}" for name, t in per_frame.items())
    ratio = cutie.cpu_seconds / vos_engine.cpu_seconds
    print(f"CPU seconds per frame (all threads): {cpu} | ratio engine {ratio:.2f}x")


if __name__ == "__main__":
    main()
