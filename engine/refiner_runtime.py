"""The learned refiner's network run by OpenVINO on a CPU, in float32 or, beside a network run in
bfloat16, in bfloat16.

The refiner (engine.mask_refiner) is a few small convolutions over the uncertain window of each
frame. Eager torch runs each as an op of its own, a pass over memory each, and a 1x1 layer of a
batch of one on one thread takes torch's slow path. OpenVINO fuses and runs the same graph about
twice as fast. On the refiners' inputs captured from three training clips (one core, every window
a new input size): train 17-18 -> 8.6 ms a frame, bear 7-10 -> 4.8, dance-jump 6-10 -> 5.4
(README, twenty-seventh round). The refined logits equal torch's within 2e-5 in float32. In
bfloat16 a refiner call takes a third less (four training clips, one core: about 20 -> 13.5 ms a
frame) and the cross-validation's J&F in bfloat16 moves by +0.01 (README, thirty-seventh round); a
session asks for it where it runs the network in bfloat16 (``half``, engine.refiners).

The graph (the frozen encoder and the trained head, for one image and K objects) is exported to
ONNX once per refiner and kept in the cache folder (:func:`engine.runtime.cache_dir`); OpenVINO
keeps what it compiles beside it, as for the embedding (engine.openvino_runtime).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.openvino_runtime import compile_for_cpu
from engine.runtime import cache_dir, cached_graph, cached_per_model, export_onnx, fingerprint

__all__ = ["OpenVinoRefiner", "RefinerGraph", "refiner_graph_file"]

_FORMAT = 1  # bump when the exported graph changes for the same weights


class RefinerGraph(nn.Module):
    """What the exported graph computes: the net's :meth:`engine.mask_refiner.RefinerNet.refine_logits`,
    image (1, 3, H, W) RGB in [0, 255], coarse logits (K, 1, H, W) -> refined logits (K, 1, H/2, W/2)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.net.refine_logits(image, logits)


def refiner_graph_file(net: nn.Module) -> Path:
    """Where the graph of ``net`` (a :class:`engine.mask_refiner.RefinerNet`) is kept: named by
    its weights, its configuration and the exporter's version."""
    return cache_dir() / f"refiner-{fingerprint(net, _FORMAT)}.onnx"


def _export(net: nn.Module) -> bytes:
    example = (torch.zeros(1, 3, 64, 96), torch.zeros(1, 1, 64, 96))
    names = {
        "image": {2: "height", 3: "width"},
        "logits": {0: "objects", 2: "height", 3: "width"},
        "refined": {0: "objects", 2: "half_height", 3: "half_width"},
    }
    return export_onnx(RefinerGraph(net).eval(), example, names)


class OpenVinoRefiner:
    """:class:`RefinerGraph` of a net compiled by OpenVINO for the CPU in float32 (``bfloat16``:
    bfloat16 where the CPU has it), for any window size and number of objects; one inference at a
    time (the refinement thread and a backward pass may share it). Compiled at the first call, on
    the thread that refines, not on the way to a run's first frame."""

    def __init__(self, net: nn.Module, *, threads: int | None = None, bfloat16: bool = False) -> None:
        self._net = net
        self._threads = threads or torch.get_num_threads()
        self.bfloat16 = bfloat16
        self._request = None
        self._lock = threading.Lock()

    def _compile(self):
        net = self._net
        path = refiner_graph_file(net)
        graph = None if path.is_file() else cached_graph(path, lambda: _export(net))
        return compile_for_cpu(path, graph, threads=self._threads, bfloat16=self.bfloat16).create_infer_request()

    @classmethod
    def for_net(cls, net: nn.Module, *, bfloat16: bool = False) -> OpenVinoRefiner:
        """One compiled graph per net, thread count and precision (:func:`engine.runtime.cached_per_model`)."""
        threads = torch.get_num_threads()
        key = ("openvino-refiner", threads, bfloat16)
        return cached_per_model(net, key, lambda: cls(net, threads=threads, bfloat16=bfloat16))

    def load(self) -> None:
        """Compile now, not at the first call (engine.refiners.load_refiner_network)."""
        with self._lock:
            if self._request is None:
                self._request = self._compile()

    def __call__(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """image (1, 3, H, W) float32 in [0, 255], logits (K, 1, H, W) -> refined (K, 1, H/2, W/2)."""
        feeds = {
            "image": np.ascontiguousarray(image.detach().float().cpu().numpy()),
            "logits": np.ascontiguousarray(logits.detach().float().cpu().numpy()),
        }
        with self._lock:
            if self._request is None:
                self._request = self._compile()
            out = self._request.infer(feeds)[0]
        return torch.from_numpy(np.array(out))
