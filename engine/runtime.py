"""How the network runs on a CPU in float32: an inference copy of it, its ONNX export, ONNX Runtime.

OpenVINO (engine.openvino_runtime) runs the same export faster and is what ``auto`` picks where it
is installed (:func:`resolve_runtime`); ONNX Runtime remains the choice ``onnx``.

Eager PyTorch runs each EfficientNet-Lite block as separate pad, convolution, batch-norm and ReLU6
ops, each a pass over memory; on 2 AVX2 cores the backbone took 0.23-0.26 s a frame at 768x416.
Two steps, each timed there on the backbone alone (``benchmarks/bench_engine.py`` times the engine):

- :func:`inference_copy`: batch norm folded into the convolutions' weights and bias, TensorFlow's
  "SAME" padding done inside the convolution where it is symmetric (every stride-1 layer; only the
  five strided layers keep an explicit pad), channels-last memory: 0.13-0.15 s.
- :class:`OnnxEmbedding`: that copy and the head exported to ONNX (once per model, kept in the
  user's cache folder) and run by ONNX Runtime, whose depthwise kernels are faster than oneDNN's
  on these CPUs: 0.09 s for the backbone, 0.13-0.14 s with the trained head.

Both compute the same function as :meth:`engine.model.EmbeddingModel.embed` up to float32
rounding (the tests compare them). Neither is used for reduced precision, where torch's own
bfloat16/float16 kernels run.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import EfficientNetLite, _MBConv, _SameConv2d
from engine.errors import VosError
from engine.files import write_atomic
from engine.model import OUTPUT_STRIDE, EmbeddingModel

RUNTIMES = ("auto", "torch", "onnx", "openvino")
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: (versions, session)}
_GRAPH_FORMAT = 3  # bump when the exported graph changes for the same weights (3: no Expand in normalising)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` in eval mode, with no padding of its own."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight.data = (conv.weight * scale.reshape(-1, 1, 1, 1)).detach().clone()
    fused.bias.data = ((bias - bn.running_mean) * scale + bn.bias).detach().clone()
    return fused


class SameFused(nn.Module):
    """``bn(same_conv(x))`` as one convolution. SAME padding of a stride-1 odd kernel is symmetric
    and goes into the convolution; a stride-2 layer on an even-sized input (always the case here:
    inputs are multiples of 32) pads ``k - 2`` in total, one less before than after."""

    def __init__(self, conv: _SameConv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = fold_batchnorm(conv, bn)
        k, s = conv.kernel_size[0], conv.stride[0]
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or k % 2 == 0:
            raise ValueError("Only square odd kernels with equal strides are folded.")
        if s == 1:
            self.conv.padding = (k // 2, k // 2)
            self.pad = None
        elif s == 2:
            total = k - 2
            self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)
        else:
            raise ValueError("Only strides 1 and 2 are folded.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x)


class FusedBlock(nn.Module):
    """An EfficientNet-Lite block (expand, depthwise, project) with batch norm folded in; also the
    learned refiner's frozen early layers (engine.mask_refiner)."""

    def __init__(self, block: _MBConv) -> None:
        super().__init__()
        self.expand = SameFused(block._expand_conv, block._bn0) if block.has_expand else None
        self.depthwise = SameFused(block._depthwise_conv, block._bn1)
        self.project = SameFused(block._project_conv, block._bn2)
        self.residual = block.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class FusedEfficientNetLite(nn.Module):
    """EfficientNet-Lite's feature layers for inference only: (B, 3, H, W) normalised, H and W
    multiples of 32 -> [(B, C_l, H/s_l, W/s_l)], as :meth:`EfficientNetLite.forward`."""

    def __init__(self, backbone: EfficientNetLite) -> None:
        super().__init__()
        self.stem = SameFused(backbone._conv_stem, backbone._bn0)
        self.blocks = nn.ModuleList(FusedBlock(b) for b in backbone._blocks)
        self.taps = sorted(backbone._taps)
        self.levels = backbone.levels
        self.normalisation = backbone.normalisation

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.stem(image))
        out: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


def inference_copy(model: EmbeddingModel) -> EmbeddingModel:
    """A float32 copy of ``model`` for CPU inference: batch norm folded (EfficientNet-Lite
    backbones; others are copied as they are) and channels-last weights. ``model`` is unchanged."""
    backbone = model.backbone
    if isinstance(backbone, EfficientNetLite) and not backbone.training:
        backbone = FusedEfficientNetLite(backbone)
    else:
        backbone = copy.deepcopy(backbone)
    fast = EmbeddingModel(backbone, copy.deepcopy(model.head), model.config).float().eval()
    return fast.to(memory_format=torch.channels_last)


class _EmbedGraph(nn.Module):
    """``embed`` with the coordinate grid as an input, so the exported graph has no Python in it."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        return self.model.embed_at(image, coords)


def cached_per_model(model: nn.Module, key: tuple, build):
    """``build()``'s runtime session for ``model`` (the embedding, or the learned refiner's net) and
    ``key`` (runtime, threads, ...), kept while
    the model lives (a run over many videos, ``vosctl eval``, builds it once). Weights changed in
    place since (training validates the model it trains) make a new one: every tensor counts its
    in-place changes in ``_version``."""
    versions = tuple(t._version for t in (*model.parameters(), *model.buffers()))
    per_model = _SESSIONS.setdefault(model, {})
    cached = per_model.get(key)
    if cached is None or cached[0] != versions:
        per_model[key] = (versions, build())
    return per_model[key][1]


def _installed(module: str) -> bool:
    """Whether ``module`` is installed, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# onnx is only found, not imported: torch's exporter needs it, but only to export a graph the
# cache does not hold yet, and importing it (with the ml_dtypes it loads) took 0.4 s of every
# run's start. The runtime itself is imported: one that is installed but does not load is not used.
def onnxruntime_available() -> bool:
    return _installed("onnx") and _importable("onnxruntime")


def cache_dir() -> Path:
    """Where exported graphs are kept between runs: ``$VOSCTL_CACHE``, else the user's cache
    folder (``$XDG_CACHE_HOME/vosctl``, ``~/.cache/vosctl``)."""
    if os.environ.get("VOSCTL_CACHE"):
        return Path(os.environ["VOSCTL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vosctl"


def writable_folder(path: Path) -> bool:
    """Whether ``path`` is (or could be made) a folder this process can write to."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def fingerprint(module: nn.Module, graph_format: int) -> str:
    """What a graph exported from ``module`` depends on: its weights, its configuration
    (``module.config``), the graph's format and the exporter's version."""
    onnx_version = importlib.metadata.version("onnx")  # read from its metadata: no import
    digest = hashlib.sha256(f"{graph_format} {torch.__version__} {onnx_version} {module.config}".encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def export_onnx(module: nn.Module, example: tuple, names: dict[str, dict[int, str]], outputs: int = 1) -> bytes:
    """``module`` (in eval mode) as an ONNX graph, traced on ``example``: ``names`` maps each input,
    then each of the ``outputs`` outputs, to its dynamic axes."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=list(names)[: len(names) - outputs],
            output_names=list(names)[len(names) - outputs :],
            dynamic_axes=names,
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def _export(model: EmbeddingModel) -> bytes:
    fast = inference_copy(model).to(memory_format=torch.contiguous_format)
    example = (torch.zeros(1, 3, 64, 96), torch.zeros(1, 3, 64 // OUTPUT_STRIDE, 96 // OUTPUT_STRIDE))
    names = {
        "image": {0: "batch", 2: "height", 3: "width"},
        "coords": {0: "batch", 2: "grid_height", 3: "grid_width"},
        "embedding": {0: "batch", 2: "grid_height", 3: "grid_width"},
    }
    return export_onnx(_EmbedGraph(fast).eval(), example, names)


def graph_file(model: EmbeddingModel) -> Path:
    """Where :func:`exported_graph` keeps the model's graph (it may not be there yet)."""
    return cache_dir() / f"embed-{fingerprint(model, _GRAPH_FORMAT)}.onnx"


def exported_graph(model: EmbeddingModel) -> bytes:
    """The model's embedding as an ONNX graph (any batch and input size): exported (2 s on 2
    cores) the first time, then read from :func:`cache_dir` (a file per model and version)."""
    return cached_graph(graph_file(model), lambda: _export(model))


def cached_graph(path: Path, export: Callable[[], bytes]) -> bytes:
    """The graph in ``path``, or ``export()``'s, then kept there; a cache that cannot be written is
    skipped."""
    try:
        return path.read_bytes()
    except OSError:
        pass
    graph = export()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(graph))
    except OSError:
        pass
    return graph


class OnnxEmbedding:
    """``model.embed_at`` run by ONNX Runtime on the CPU in float32, for any batch and input size.

    ONNX Runtime's threads do not spin while waiting for work (``allow_spinning=0``): spinning
    threads steal time from other processes and from this one's decode and encode threads.
    """

    def __init__(self, model: EmbeddingModel, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(exported_graph(model), options, providers=["CPUExecutionProvider"])

    @classmethod
    def for_model(cls, model: EmbeddingModel) -> OnnxEmbedding:
        """One runtime session per model and thread count (:func:`cached_per_model`)."""
        threads = torch.get_num_threads()
        return cached_per_model(model, ("onnx", threads), lambda: cls(model, threads=threads))

    def __call__(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) float32 in [0, 255], coords (B, 3, H/8, W/8) -> (B, D, H/8, W/8)."""
        feeds = {
            "image": np.ascontiguousarray(image.detach().float().cpu().numpy()),
            "coords": np.ascontiguousarray(coords.detach().float().cpu().numpy()),
        }
        (embedding,) = self._session.run(["embedding"], feeds)
        return torch.from_numpy(embedding)


def import_openvino():
    """``import openvino``, without its usage telemetry.

    OpenVINO's package sends an event to Google Analytics when it is imported, from a forked
    process on a thread of its own (waiting up to 3 s where there is no network), and counts its
    imports in files under ``~/intel``, unless a consent file there says no. A tool that runs
    offline on the user's videos has no business doing either, and the thread, left running,
    also kept the process from exiting quickly (0.25 s a run here). OpenVINO's modules fall back
    to a stub when ``openvino_telemetry`` cannot be imported; an empty entry for it in
    ``sys.modules`` makes it so. A process that imported it already is left as it is.
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None
    import openvino

    return openvino


def openvino_available() -> bool:
    if not _installed("onnx"):
        return False
    try:
        import_openvino()
    except ImportError:
        return False
    return True


def resolve_runtime(name: str, device: torch.device, reduced: bool) -> str:
    """``auto`` -> ``openvino`` on a CPU when OpenVINO is installed (float32, or bfloat16 where
    ``reduced``), else ``onnx`` for float32 on a CPU when ONNX Runtime is, else ``torch``."""
    if name not in RUNTIMES:
        raise VosError(f"Unknown runtime '{name}'; choose one of: {', '.join(RUNTIMES)}.")
    cpu = device.type == "cpu"
    cpu_float32 = cpu and not reduced
    if name == "auto":
        if cpu and openvino_available():
            return "openvino"
        return "onnx" if cpu_float32 and onnxruntime_available() else "torch"
    if name == "onnx" and not cpu_float32:
        raise VosError("The onnx runtime runs float32 on a CPU only: add --full-precision, or use --device cpu.")
    if name == "onnx" and not onnxruntime_available():
        raise VosError("The onnx runtime needs the onnx and onnxruntime packages: pip install onnx onnxruntime.")
    if name == "openvino" and not cpu:
        raise VosError("The openvino runtime runs on a CPU only: use --device cpu, or another runtime.")
    if name == "openvino" and not openvino_available():
        raise VosError("The openvino runtime needs the onnx and openvino packages: pip install onnx openvino.")
    return name
