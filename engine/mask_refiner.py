"""A learned boundary refiner: coarse object probabilities + the frame -> sharper probabilities.

Retrieval labels the stride-8 grid; upsampled, its boundaries are blurred over a cell or two and a
part thinner than a cell is lost. Perfect labels on that grid score J 0.918 on the training set,
0.963 on a stride-4 grid (README, fourth round), and colour filters (the bilateral solver, guided
filters) do not close that gap on their own. This refiner looks at the frame itself: the first
layers of the backbone's ImageNet network (EfficientNet-Lite0's stem and blocks up to stride 4,
frozen) give edge and texture features at strides 2 and 4, and a small trained head turns each
object's coarse logit and those features into a residual on the logit at stride 2 (then bilinear
to the frame). It runs only on the window around the uncertain pixels, at the resolution that would
make the frame's longer side ``work_size`` (a smaller frame is enlarged, at most ``enlarge``
times, towards the scale the refiner was trained at: on the 432x240 multi-object dev clips mean J
per object 0.659 -> 0.661, 44 objects better and 9 worse; not enlarged, the five-object clips at
432x240 ran 23-26% faster for about 0.1 J per object less, README, thirty-ninth round); the
confident pixels outside keep their probabilities. On fold 0 of the cross-validation (then the
bilateral solver at 512) a working size of 512 scored as well as the full 854 pixels (J&F 0.845
against 0.843; 384: 0.842) for a third of the cost.

Several objects: the head refines each object against everything else, each in the window around
its own uncertain pixels, and the K probabilities (refined in an object's window, as they were
outside it) are merged with the background (:func:`aggregate`).

:func:`load_refiner` reads a refiner file (``trainer/refiner_train.py`` writes them); the shipped
one is ``engine/weights/refiner.pt``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import EfficientNetLite, Normalisation, lite_early_layers
from engine.bilateral_params import UNCERTAIN_LEVEL
from engine.bilateral_refiner import top_two_margin, uncertain_window
from engine.errors import VosError
from engine.factory import atomic_save, read_torch_file
from engine.runtime import FusedBlock, SameFused

__all__ = [
    "LearnedRefiner",
    "RefinerConfig",
    "RefinerNet",
    "SHIPPED_REFINER",
    "load_refiner",
    "save_refiner",
]

FORMAT = "vosctl-refiner"
SHIPPED_REFINER = Path(__file__).parent / "weights" / "refiner.pt"
LOGIT_CLAMP = 8.0  # coarse probabilities of exactly 0 or 1 become logits of +-8
MAX_ENLARGE = 2.0  # by default a frame smaller than the working size is enlarged at most this much
# The working window's sides are padded (by repeating its last row and column) to multiples of this
# many pixels, and the padding's output dropped. A compiled graph prepares its kernels for each new
# input size (OpenVINO: a first call took 1.9x a repeated one, ~9 ms more at these sizes on one
# core), and the window's size changes with nearly every frame: on six training clips 347 sizes in
# 442 calls at multiples of 4, 86 at multiples of 32, for 13.5% more pixels (README, thirtieth round).
SHAPE_STEP = 32


@dataclass(frozen=True)
class RefinerConfig:
    """What rebuilds a refiner: the encoder's backbone (its pretrained layers up to stride 4 are
    frozen and come from their package) and the head's widths."""

    encoder: str = "efficientnet_lite0"
    width: int = 32  # channels of the stride-4 part
    fine: int = 16  # channels of the stride-2 part


class LiteEncoder(nn.Module):
    """EfficientNet-Lite's layers up to stride 4, frozen, batch norm folded into the convolutions
    (engine.runtime): normalised image -> (f2, f4)."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.stem = SameFused(backbone._conv_stem, backbone._bn0)
        strides = [backbone.layer_strides[f"_blocks.{i}"] for i in range(len(backbone._blocks))]
        blocks = list(zip(backbone._blocks, strides, strict=True))
        self.to_2 = nn.Sequential(*[FusedBlock(b) for b, s in blocks if s == 2])
        self.to_4 = nn.Sequential(*[FusedBlock(b) for b, s in blocks if s == 4])
        self.channels = (
            [b for b, s in blocks if s == 2][-1]._bn2.num_features,
            [b for b, s in blocks if s == 4][-1]._bn2.num_features,
        )
        self.normalisation = backbone.normalisation

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised, H and W multiples of 4 -> (B, C2, H/2, W/2), (B, C4, H/4, W/4)."""
        f2 = self.to_2(F.relu6(self.stem(image)))
        return f2, self.to_4(f2)


class TinyEncoder(nn.Module):
    """A small random encoder with the same interface, for tests (seed 0, so files rebuild it)."""

    normalisation = Normalisation(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.to_2 = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
            self.to_4 = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU())
        self.channels = (4, 6)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.to_2(image)
        return f2, self.to_4(f2)


def create_encoder(name: str) -> nn.Module:
    if name == "tiny":
        return TinyEncoder().eval()
    return LiteEncoder(lite_early_layers(name)).eval()  # names the Lite backbones when ``name`` is none of them


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)


class RefinerNet(nn.Module):
    """Frozen encoder + trained head: ``(image, logits) -> refined logits``, one object per batch item."""

    def __init__(self, encoder: nn.Module, config: RefinerConfig) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.config = config
        c2, c4 = encoder.channels
        w, f = config.width, config.fine
        self.coarse = nn.Sequential(
            _conv(c4 + 1, w), nn.ReLU(inplace=True), _conv(w, w, 2), nn.ReLU(inplace=True), _conv(w, w), nn.ReLU()
        )
        self.fine = nn.Sequential(_conv(w + c2 + 1, f), nn.ReLU(inplace=True), _conv(f, 1))

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) RGB in [0, 255] -> the frozen encoder's (f2, f4)."""
        with torch.no_grad():
            return self.encoder(self.encoder.normalisation.apply(image))

    def head(self, f2: torch.Tensor, f4: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """f2 (B, C2, H/2, W/2), f4 (B, C4, H/4, W/4), coarse logits (B, 1, H, W) -> (B, 1, H/2, W/2)."""
        logits = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        l2 = F.interpolate(logits, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        l4 = F.interpolate(logits, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.coarse(torch.cat([f4, l4 / 4.0], dim=1))
        x = F.interpolate(x, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return l2 + self.fine(torch.cat([x, f2, l2 / 4.0], dim=1))

    def refine_logits(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """image (1, 3, H, W) in [0, 255], coarse logits (K, 1, H, W) of K objects -> refined logits
        (K, 1, H/2, W/2); the image's features are computed once for the K objects."""
        f2, f4 = self.features(image)
        k = logits.shape[0]
        return self.head(f2.expand(k, -1, -1, -1), f4.expand(k, -1, -1, -1), logits)

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 255], logits (B, 1, H, W) -> refined logits (B, 1, H, W)."""
        f2, f4 = self.features(image)
        out = self.head(f2, f4, logits)
        return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)


def aggregate(objects: torch.Tensor) -> torch.Tensor:
    """(K, H, W) per-object probabilities -> (K + 1, H, W), background first, summing to 1.

    The background is what no object claims, prod(1 - p_k); the objects share the rest in
    proportion to their own probabilities. With one object this is exactly (1 - p, p).
    """
    p = objects.clamp(0.0, 1.0)
    background = torch.prod(1 - p, dim=0, keepdim=True)
    share = p / p.sum(dim=0, keepdim=True).clamp_min(1e-12)
    return torch.cat([background, share * (1 - background)])


class LearnedRefiner:
    """The ``refiner`` of :class:`engine.session.VideoSession`: ``refiner(frame, probs) -> probs``.

    Only the window around the pixels whose top-two margin is below ``level`` (plus ``margin``
    pixels of context) is refined, scaled so the frame's longer side would be ``work_size`` (0: the
    frame's own; a smaller frame enlarged at most ``enlarge`` times, 1: never); the pixels outside
    keep their probabilities.
    ``compiled``: the net's encoder and head as one compiled graph (engine.refiner_runtime's
    ``OpenVinoRefiner``), which computes the same; None: the torch net.
    """

    def __init__(
        self,
        net: RefinerNet,
        *,
        work_size: int = 512,
        margin: int = 24,
        level: float = UNCERTAIN_LEVEL,
        enlarge: float = MAX_ENLARGE,
        compiled=None,
    ) -> None:
        self.net = net.eval()
        self.work_size = work_size
        self.enlarge = enlarge
        self.margin = margin
        self.level = level
        self.compiled = compiled

    @torch.inference_mode()
    def __call__(self, frame: np.ndarray, probs):
        """frame (H, W, 3) uint8 RGB; probs (K + 1, H, W) numpy array or torch tensor, same type back."""
        is_numpy = isinstance(probs, np.ndarray)
        tensor = torch.from_numpy(probs) if is_numpy else probs
        if tensor.shape[1:] != frame.shape[:2]:
            raise VosError("The probabilities and the frame must have the same height and width.")
        out = tensor.float().clone()
        windows = self._windows(out.cpu().numpy())
        if windows:
            scale = min(self.enlarge, self.work_size / max(frame.shape[:2])) if self.work_size else 1.0
            ys, xs = _union(list(windows.values()))
            objects = out[1:, ys, xs].clone()  # (K, h, w): outside its own window an object keeps its own
            for k, (wy, wx) in windows.items():
                inner = (slice(wy.start - ys.start, wy.stop - ys.start), slice(wx.start - xs.start, wx.stop - xs.start))
                objects[k][inner] = self._refine_objects(frame[wy, wx], out[1 + k, wy, wx][None], scale)[0]
            out[:, ys, xs] = aggregate(objects)
        return out.numpy() if is_numpy else out

    def _windows(self, probs: np.ndarray) -> dict[int, tuple[slice, slice]]:
        """(K + 1, H, W) -> object index -> the window around its own uncertain pixels (its
        probability's margin against everything else, |2p - 1|, below ``level``), objects with none
        left out. Several objects spread over a frame each refine their own window, not the box
        around all of theirs (on five objects of a crowd the whole frame, five times)."""
        if probs.shape[0] < 2:
            return {}
        if probs.shape[0] == 2:  # one object: its margin is the top-two margin |p0 - p1|
            margins = [top_two_margin(probs)]
        else:
            margins = [np.abs(2.0 * p - 1.0) for p in probs[1:]]
        found = {k: uncertain_window(m, self.margin, self.level) for k, m in enumerate(margins)}
        return {k: w for k, w in found.items() if w is not None}

    def _refine_objects(self, crop: np.ndarray, objects: torch.Tensor, scale: float) -> torch.Tensor:
        """crop (h, w, 3) uint8, objects' probabilities (K, h, w) -> refined (K, h, w), worked at
        ``scale``; each object against everything else."""
        h, w = crop.shape[:2]
        # The encoder halves twice: a working size of multiples of 4.
        wh, ww = max(4, round(h * scale / 4) * 4), max(4, round(w * scale / 4) * 4)
        device = next(self.net.coarse.parameters()).device
        image = torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1)[None].float()
        objects = objects.to(device)[:, None]  # (K, 1, h, w)
        if (wh, ww) != (h, w):
            image = F.interpolate(image, size=(wh, ww), mode="bilinear", align_corners=False)
            objects = F.interpolate(objects, size=(wh, ww), mode="bilinear", align_corners=False)
        logits = torch.logit(objects.clamp(1e-6, 1 - 1e-6))
        pad_h, pad_w = -wh % SHAPE_STEP, -ww % SHAPE_STEP
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
            logits = F.pad(logits, (0, pad_w, 0, pad_h), mode="replicate")
        refined = (self.compiled or self.net.refine_logits)(image, logits)[..., : wh // 2, : ww // 2]
        refined = F.interpolate(refined, size=(h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(refined[:, 0])


def _union(windows: list[tuple[slice, slice]]) -> tuple[slice, slice]:
    """The box around several (rows, columns) windows."""
    return (
        slice(min(w[0].start for w in windows), max(w[0].stop for w in windows)),
        slice(min(w[1].start for w in windows), max(w[1].stop for w in windows)),
    )


def _head_state(net: RefinerNet) -> dict[str, torch.Tensor]:
    """The trained weights: everything but the frozen encoder, which comes from its package."""
    return {k: v for k, v in net.state_dict().items() if not k.startswith("encoder.")}


def save_refiner(net: RefinerNet, path: str | Path) -> None:
    """Write the head's weights (half precision) and the config; the encoder comes from its package."""
    head = {k: v.half() for k, v in _head_state(net).items()}
    atomic_save({"format": FORMAT, "config": asdict(net.config), "head": head}, Path(path))


def build_refiner_net(config: RefinerConfig) -> RefinerNet:
    return RefinerNet(create_encoder(config.encoder), config)


def load_refiner(path: str | Path | None = None, device: str | torch.device = "cpu") -> RefinerNet:
    """A refiner file (default: the shipped one) -> :class:`RefinerNet` on ``device``, in eval mode."""
    path = Path(path) if path is not None else SHIPPED_REFINER
    payload = read_torch_file(path, "refiner file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VosError(f"{path} is not a vosctl refiner file.")
    try:
        config = RefinerConfig(**payload["config"])
    except TypeError as error:
        raise VosError(f"The refiner file {path} has unknown settings.") from error
    net = build_refiner_net(config)
    own = _head_state(net)
    state = payload["head"]
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise VosError(f"The weights in {path} do not fit the refiner's head.")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return net.to(device).eval()
