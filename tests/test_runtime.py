"""The fast CPU paths compute the model's own embedding: folded batch norm, ONNX Runtime, OpenVINO, batches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.embedder import FrameEmbedder
from engine.errors import VosError
from engine.model import ModelConfig, create_model
from engine.openvino_runtime import OpenVinoEmbedding
from engine.runtime import (
    OnnxEmbedding,
    graph_file,
    inference_copy,
    onnxruntime_available,
    openvino_available,
    resolve_runtime,
)
from engine.session import SessionConfig, VideoSession
from tests.conftest import davis_frames, davis_masks


@pytest.fixture(scope="module")
def lite_trained_head():
    """EfficientNet-Lite0 (ImageNet weights) with a randomly initialised trained-style head."""
    torch.manual_seed(0)
    config = ModelConfig(head="embedding", hidden=32, dim=16, skip=1.0)
    return create_model(config).eval()


def _reference(model, image, t=0.3):
    with torch.inference_mode():
        return model.embed(image, t)


def test_folded_copy_equals_the_model_and_leaves_it_unchanged(lite_trained_head):
    image = torch.rand(2, 3, 96, 160) * 255
    before = {k: v.clone() for k, v in lite_trained_head.state_dict().items()}
    fast = inference_copy(lite_trained_head)
    with torch.inference_mode():
        from engine.model import coordinate_grid

        coords = torch.stack([coordinate_grid(12, 20, 0.3)] * 2)
        got = fast.embed_at(image.contiguous(memory_format=torch.channels_last), coords)
    expected = _reference(lite_trained_head, image)
    assert (got - expected).abs().max() < 1e-4
    assert all(torch.equal(before[k], v) for k, v in lite_trained_head.state_dict().items())
    assert not any("bn" in name for name, _ in fast.backbone.named_modules() if name)


RUNTIME_CLASSES = [
    pytest.param(OnnxEmbedding, marks=pytest.mark.skipif(not onnxruntime_available(), reason="no onnxruntime")),
    pytest.param(OpenVinoEmbedding, marks=pytest.mark.skipif(not openvino_available(), reason="no openvino")),
]


def _batch(sizes=(96, 160), times=(0.0, 0.1, 0.2)):
    from engine.model import coordinate_grid

    image = torch.rand(len(times), 3, *sizes) * 255
    coords = torch.stack([coordinate_grid(sizes[0] // 8, sizes[1] // 8, t) for t in times])
    return image, coords


@pytest.mark.parametrize("runtime", RUNTIME_CLASSES)
def test_runtime_embedding_equals_the_model_for_any_batch_and_is_a_copy(lite_trained_head, runtime):
    image, coords = _batch()
    network = runtime(lite_trained_head)
    with torch.inference_mode():
        expected = lite_trained_head.embed_at(image, coords)
    got = network(image, coords)
    assert got.dtype == torch.float32 and (got - expected).abs().max() < 1e-4
    assert (network(image[:1], coords[:1]) - expected[:1]).abs().max() < 1e-4
    # The next call, of another size, leaves an earlier result as it was.
    kept = got.clone()
    network(*_batch((64, 96), (0.5,)))
    assert torch.equal(got, kept)


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_openvino_bfloat16_keeps_the_embedding_directions(lite_trained_head):
    """bfloat16 (float32 where the CPU lacks it): the same directions, to bfloat16's precision."""
    image, coords = _batch()
    with torch.inference_mode():
        expected = lite_trained_head.embed_at(image, coords)
    half = OpenVinoEmbedding(lite_trained_head, bfloat16=True)(image, coords)
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(half, expected, dim=1).min() > 0.98


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_openvino_network_is_compiled_once_per_model_precision_and_weights(tiny_model):
    first = OpenVinoEmbedding.for_model(tiny_model)
    assert OpenVinoEmbedding.for_model(tiny_model) is first
    assert OpenVinoEmbedding.for_model(tiny_model, bfloat16=True) is not first
    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.0)  # an in-place change bumps the weights' version
    assert OpenVinoEmbedding.for_model(tiny_model) is not first


def test_runtime_choice():
    cpu = torch.device("cpu")
    assert resolve_runtime("torch", cpu, False) == "torch"
    if openvino_available():
        assert resolve_runtime("auto", cpu, False) == "openvino"
        assert resolve_runtime("auto", cpu, True) == "openvino"  # bfloat16 too
        assert resolve_runtime("openvino", cpu, True) == "openvino"
    elif onnxruntime_available():
        assert resolve_runtime("auto", cpu, False) == "onnx"
        assert resolve_runtime("auto", cpu, True) == "torch"
    with pytest.raises(VosError):
        resolve_runtime("openvino", torch.device("cuda"), True)
    with pytest.raises(VosError):
        resolve_runtime("onnx", cpu, True)
    with pytest.raises(VosError):
        resolve_runtime("tensorrt", cpu, False)
    with pytest.raises(VosError):
        SessionConfig(runtime="tensorrt")


@pytest.mark.slow
def test_runtimes_and_batches_give_the_same_masks_on_a_real_sequence(davis_root):
    """Tolerance: float32 networks that differ only in the order of their arithmetic (folded batch
    norm, ONNX Runtime's and OpenVINO's kernels, batched convolutions) give embeddings within 1e-4; after retrieval,
    at most 0.1% of a frame's pixels may change label (ties between near-equal neighbours) on the first frames. A
    cell flipped by such a tie is then carried on by the online memory: 1% on the later frames (the network's
    input resized bilinearly, 0.3-0.7% from the sixth frame on between torch and the exported graphs)."""
    from engine.factory import build_model

    frames = davis_frames(davis_root, "dance-jump", 8, size=(427, 240))
    first = davis_masks(davis_root, "dance-jump", 1)[0].astype(np.uint8)
    first = np.ascontiguousarray(first[::2, ::2][:240, :427])
    model = build_model(None)
    results = {}
    runtimes = ["torch"] + ["onnx"] * onnxruntime_available() + ["openvino"] * openvino_available()
    for runtime in runtimes:
        for batch in (1, 8):
            config = SessionConfig(max_size=320, runtime=runtime, half=False).with_overrides(**model.config.inference)
            session = VideoSession(model, config)
            masks = [first] + [None] * (len(frames) - 1)
            ids = []
            for start in range(0, len(frames), batch):
                probs = session.step_batch(frames[start : start + batch], masks[start : start + batch])
                ids += [session.to_ids(p) for p in probs]
            results[runtime, batch] = np.stack(ids)
    reference = results["torch", 1]
    for key, ids in results.items():
        changed = (ids != reference).reshape(len(ids), -1).mean(1)
        assert changed[:5].max() <= 1e-3 and changed.max() <= 1e-2, (key, changed)


def test_embedder_batches_equal_single_frames(tiny_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8) for _ in range(3)]
    embedder = FrameEmbedder(tiny_model, max_size=96, device=torch.device("cpu"), half=False, runtime="torch")
    together = embedder.embed(images, [0.0, 0.01, 0.02])
    for i, image in enumerate(images):
        alone = embedder.embed([image], [i / 100])[0]
        assert (alone.keys - together[i].keys).abs().max() < 1e-5
        assert torch.equal(alone.coords, together[i].coords)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx/onnxruntime not installed")
def test_onnx_graph_is_cached_and_rebuilt_when_the_weights_change(tiny_model, tmp_path, monkeypatch):
    import copy

    from engine import runtime
    from engine.model import coordinate_grid

    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    model = copy.deepcopy(tiny_model)
    first = OnnxEmbedding.for_model(model)
    assert OnnxEmbedding.for_model(model) is first
    cached = list((tmp_path / "cache").glob("embed-*.onnx"))
    assert len(cached) == 1
    exports = []
    monkeypatch.setattr(runtime, "_export", lambda m: exports.append(m) or b"")
    assert runtime.exported_graph(model) == cached[0].read_bytes()  # read back, not exported again
    assert exports == []
    monkeypatch.undo()
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)  # as an optimiser step changes them
    again = OnnxEmbedding.for_model(model)
    assert again is not first
    assert len(list((tmp_path / "cache").glob("embed-*.onnx"))) == 2
    image = torch.rand(1, 3, 64, 96) * 255
    coords = coordinate_grid(8, 12, 0.0)[None]
    with torch.inference_mode():
        expected = model.embed_at(image, coords)
    assert (again(image, coords) - expected).abs().max() < 1e-4
    # Any input size runs on the one graph.
    image, coords = torch.rand(2, 3, 96, 64) * 255, torch.stack([coordinate_grid(12, 8, 0.1)] * 2)
    with torch.inference_mode():
        assert (again(image, coords) - model.embed_at(image, coords)).abs().max() < 1e-4


def test_an_unwritable_cache_is_skipped(tiny_model, tmp_path, monkeypatch):
    if not onnxruntime_available():
        pytest.skip("onnx/onnxruntime not installed")
    from engine import runtime

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VOSCTL_CACHE", str(blocker / "cache"))
    assert runtime.exported_graph(tiny_model)  # exported, not cached
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_openvino_keeps_its_compiled_network_beside_the_graph(tiny_model, tmp_path, monkeypatch):
    from engine.model import coordinate_grid

    image, coords = torch.rand(1, 3, 64, 96) * 255, coordinate_grid(8, 12, 0.0)[None]
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    first = OpenVinoEmbedding(tiny_model, threads=1)(image, coords)
    compiled = list((tmp_path / "cache" / "openvino").glob("*.blob"))
    assert len(compiled) == 1
    again = OpenVinoEmbedding(tiny_model, threads=1)(image, coords)  # read back from the cache
    assert torch.equal(again, first)
    assert list((tmp_path / "cache" / "openvino").glob("*.blob")) == compiled
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VOSCTL_CACHE", str(blocker / "cache"))
    assert torch.equal(OpenVinoEmbedding(tiny_model, threads=1)(image, coords), first)  # no cache at all
    assert blocker.read_text() == "not a folder"


def test_finding_the_runtime_does_not_import_onnx():
    # onnx is needed only to export a graph the cache does not hold; importing it took 0.4 s of every start.
    import subprocess
    import sys

    code = (
        "import sys; from engine.runtime import onnxruntime_available, openvino_available, resolve_runtime; "
        "import torch; resolve_runtime('auto', torch.device('cpu'), False); openvino_available(); "
        "onnxruntime_available(); print('onnx' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "False"


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_openvino_sends_no_telemetry_and_writes_nothing_in_the_home_folder(tmp_path):
    """OpenVINO's import sends a usage event from a thread and counts imports under ~/intel unless
    told otherwise; the engine's import of it does neither, and leaves no thread behind."""
    import subprocess
    import sys

    code = (
        "import sys, threading; from engine.runtime import openvino_available, import_openvino; "
        "assert openvino_available(); import_openvino().Core(); "
        "print(sys.modules['openvino_telemetry'] is None, "
        "[t.name for t in threading.enumerate() if t is not threading.main_thread()])"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HOME": str(tmp_path), "CI": "false"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert done.stdout.strip() == "True []"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_a_cache_write_that_fails_compiles_without_the_cache(tiny_model, tmp_path, monkeypatch):
    # Two processes compiling the same new graph into OpenVINO's cache at once: the second's write
    # failed ("cannot set permissions"). It compiles without the cache instead of failing the run.
    from engine import openvino_runtime
    from engine.model import coordinate_grid
    from engine.runtime import import_openvino

    image, coords = torch.rand(1, 3, 64, 96) * 255, coordinate_grid(8, 12, 0.0)[None]
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    expected = OpenVinoEmbedding(tiny_model, threads=1)(image, coords)
    real = import_openvino()
    configs = []

    class RacedCore(real.Core):
        def compile_model(self, model, device, config):
            configs.append(dict(config))
            if "CACHE_DIR" in config:
                raise RuntimeError("filesystem error: cannot set permissions: No such file or directory")
            return super().compile_model(model, device, config)

    monkeypatch.setattr(openvino_runtime, "import_openvino", lambda: type("ov", (), {"Core": RacedCore}))
    got = openvino_runtime.compile_for_cpu(graph_file(tiny_model), None, threads=1)
    assert ["CACHE_DIR" in c for c in configs] == [True, False]
    request = got.create_infer_request()
    request.infer({"image": image.numpy(), "coords": coords.numpy()})
    assert np.abs(request.get_output_tensor(0).data - expected.numpy()).max() < 1e-5
