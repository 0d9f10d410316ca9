"""The network run by OpenVINO on a CPU, in float32 or, where the CPU has it, bfloat16.

It runs the same exported graph as ONNX Runtime (:func:`engine.runtime.exported_graph`: batch norm
folded, the trained head) with OpenVINO's CPU plugin, whose depthwise and 1x1 kernels are faster
on these CPUs. EfficientNet-Lite0 and the head at 768x416, 2 threads, AMD EPYC with AVX512-BF16:
ONNX Runtime 0.035 s, OpenVINO 0.023 s in float32 (and 0.034 s with its kernels limited to AVX2,
``ONEDNN_MAX_CPU_ISA=AVX2``); in bfloat16 0.014 s against torch's autocast 0.07 s. Float32
embeddings equal ONNX Runtime's within 1e-6.

The compiled network keeps its threads from spinning against other processes: no CPU pinning,
and as many inference threads as torch has (``--threads``).

OpenVINO keeps what it compiled in the cache folder beside the graph (``openvino/``, a file per
graph, thread count and precision), so that a run after the first starts sooner: compiling took
0.12 s of every run's start, reading the compiled network back 0.03 s (2-core EPYC).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from engine.model import OUTPUT_STRIDE, EmbeddingModel
from engine.runtime import cached_per_model, exported_graph, graph_file, import_openvino, writable_folder


class OpenVinoEmbedding:
    """``model.embed_at`` compiled by OpenVINO for the CPU, for any batch and input size.

    ``bfloat16`` asks the plugin for bfloat16 arithmetic (it falls back to float32 on a CPU
    without native support); inputs and outputs are float32 either way.
    """

    def __init__(self, model: EmbeddingModel, *, threads: int | None = None, bfloat16: bool = False) -> None:
        path = graph_file(model)
        graph = None if path.is_file() else exported_graph(model)  # exported into the cache where it can be
        self._request = compile_for_cpu(path, graph, threads=threads, bfloat16=bfloat16).create_infer_request()
        self._dim = model.dim
        self._tensor = import_openvino().Tensor
        # One request, shared by the threads that embed (a backward pass on the engine's thread
        # while the network thread embeds the forward pass ahead): one inference at a time.
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: EmbeddingModel, *, bfloat16: bool = False) -> OpenVinoEmbedding:
        """One compiled network per model, thread count and precision (engine.runtime.cached_per_model)."""
        threads = torch.get_num_threads()
        return cached_per_model(
            model, ("openvino", threads, bfloat16), lambda: cls(model, threads=threads, bfloat16=bfloat16)
        )

    def __call__(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) float32 in [0, 255], coords (B, 3, H/8, W/8) -> (B, D, H/8, W/8) float32."""
        feeds = {
            "image": np.ascontiguousarray(image.detach().float().cpu().numpy()),
            "coords": np.ascontiguousarray(coords.detach().float().cpu().numpy()),
        }
        # A new output buffer each call, which the network writes into: the request would reuse its
        # own on the next call, and copying the embedding out of it costs 1.5 ms a frame at 768x416.
        b, _, h, w = image.shape
        out = np.empty((b, self._dim, h // OUTPUT_STRIDE, w // OUTPUT_STRIDE), dtype=np.float32)
        with self._lock:
            self._request.set_output_tensor(0, self._tensor(out, shared_memory=True))
            self._request.infer(feeds)
        return torch.from_numpy(out)


def compile_for_cpu(path: Path, graph: bytes | None, *, threads: int | None = None, bfloat16: bool = False):
    """The graph kept in ``path`` compiled for the CPU, OpenVINO keeping what it compiles in the
    cache folder beside it (``openvino/``); where ``path`` is not there (a cache that cannot be
    written), the exported ``graph`` itself. ``threads`` inference threads (None: as many as torch
    has), not pinned to cores; bfloat16 or float32 arithmetic."""
    core = import_openvino().Core()
    config = {
        "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if bfloat16 else "f32",
        "ENABLE_CPU_PINNING": False,
    }
    if path.is_file():
        compiled_cache = path.parent / "openvino"
        if writable_folder(compiled_cache):
            try:
                return core.compile_model(str(path), "CPU", {**config, "CACHE_DIR": str(compiled_cache)})
            except RuntimeError:
                # OpenVINO's cache is not safe for two processes writing the same entry at once:
                # the second failed ("cannot set permissions: No such file or directory [...blob]")
                # when two runs started together on a graph not compiled before. Without the cache,
                # as where it cannot be written; a graph that does not compile fails again below.
                pass
        return core.compile_model(str(path), "CPU", config)
    return core.compile_model(core.read_model(graph), "CPU", config)
