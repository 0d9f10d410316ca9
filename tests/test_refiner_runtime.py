"""The learned refiner's network compiled by OpenVINO computes what the torch net does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import refiner_runtime, refiners
from engine.config import SessionConfig
from engine.devices import cpu_has_native_bf16
from engine.mask_refiner import LearnedRefiner, save_refiner
from engine.refiner_runtime import OpenVinoRefiner, RefinerGraph, refiner_graph_file
from engine.refiners import load_refiner_network, make_refiner, session_refiners
from engine.runtime import openvino_available
from tests.test_mask_refiner import tiny_net, two_object_probs

pytestmark = pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")


def test_compiled_graph_gives_the_nets_logits_at_any_size_and_object_count(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    net = tiny_net()
    compiled = OpenVinoRefiner(net, threads=1)
    for (h, w), k in (((32, 48), 1), ((44, 72), 2), ((32, 48), 3)):
        image, logits = torch.rand(1, 3, h, w) * 255, torch.randn(k, 1, h, w) * 3
        with torch.no_grad():
            expected = RefinerGraph(net)(image, logits)
        got = compiled(image, logits)
        assert got.shape == (k, 1, h // 2, w // 2)
        assert (got - expected).abs().max() < 1e-4


def test_graph_is_exported_once_per_weights_and_kept_without_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    exports = []
    export = refiner_runtime._export
    monkeypatch.setattr(refiner_runtime, "_export", lambda net: exports.append(net) or export(net))
    net = tiny_net()
    image, logits = torch.rand(1, 3, 32, 48) * 255, torch.randn(1, 1, 32, 48)
    first = OpenVinoRefiner(net, threads=1)(image, logits)
    assert refiner_graph_file(net).is_file() and len(exports) == 1
    assert torch.equal(OpenVinoRefiner(net, threads=1)(image, logits), first)  # read back, not exported
    assert len(exports) == 1
    assert refiner_graph_file(tiny_net(seed=2)) != refiner_graph_file(net)  # named by its weights
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VOSCTL_CACHE", str(blocker / "cache"))
    assert torch.equal(OpenVinoRefiner(net, threads=1)(image, logits), first)  # no cache at all
    assert blocker.read_text() == "not a folder" and len(exports) == 2


def test_learned_refiner_on_a_cpu_runs_the_compiled_graph_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "refiner.pt"
    save_refiner(tiny_net(), path)
    compiled = make_refiner("learned", "cpu", refiner_file=str(path), runtime="auto")
    eager = make_refiner("learned", "cpu", refiner_file=str(path), runtime="torch")
    assert isinstance(compiled, LearnedRefiner) and isinstance(compiled.compiled, OpenVinoRefiner)
    assert eager.compiled is None and eager.net is compiled.net
    assert make_refiner("learned", "cpu", refiner_file=str(path), runtime="auto").compiled is compiled.compiled
    frame = (np.random.default_rng(0).random((40, 96, 3)) * 255).astype(np.uint8)
    probs = two_object_probs()
    refined = compiled(frame, probs)
    assert not torch.allclose(refined, probs, atol=1e-3)  # it refines
    assert (refined - eager(frame, probs)).abs().max() < 1e-4


def test_the_refiners_network_is_compiled_by_load_not_at_the_first_frame(tmp_path, monkeypatch):
    # vosctl.pipeline compiles it on a thread of its own while the first frame is embedded.
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "refiner.pt"
    save_refiner(tiny_net(seed=3), path)
    chain = make_refiner("learned+bilateral", "cpu", refiner_file=str(path), runtime="auto")
    compiled = chain.stages[0].compiled
    compiles = []
    compile_now = compiled._compile
    monkeypatch.setattr(compiled, "_compile", lambda: compiles.append(1) or compile_now())
    load_refiner_network(chain)
    assert compiles == [1]
    frame = (np.random.default_rng(0).random((40, 96, 3)) * 255).astype(np.uint8)
    chain(frame, two_object_probs())
    load_refiner_network(chain)
    assert compiles == [1], "compiled once"
    load_refiner_network(None)  # refine "none": nothing to load
    load_refiner_network(make_refiner("bilateral", "cpu"))


@pytest.mark.parametrize("native", [torch.bfloat16, None])
def test_the_refiner_runs_in_bfloat16_where_the_session_runs_the_network_in_it(tmp_path, monkeypatch, native):
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(refiners, "reduced_precision", lambda device: native)
    path = tmp_path / "refiner.pt"
    save_refiner(tiny_net(seed=4), path)
    half = make_refiner("learned", "cpu", refiner_file=str(path), runtime="auto", half=True)
    full = make_refiner("learned", "cpu", refiner_file=str(path), runtime="auto", half=False)
    assert half.compiled.bfloat16 is (native is not None)  # only where the CPU has it
    assert full.compiled.bfloat16 is False
    assert (half.compiled is full.compiled) is (native is None)  # one compiled graph per precision
    for setting in (True, False):
        config = SessionConfig(refiner_file=str(path), runtime="auto", half=setting)
        chain, carried = session_refiners(config, "cpu")
        assert chain.stages[0].compiled.bfloat16 is (setting and native is not None)
        assert carried is chain.stages[0]


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="the CPU has no native bfloat16")
def test_the_refiners_bfloat16_graph_computes_nearly_what_float32_does(tmp_path, monkeypatch):
    monkeypatch.setenv("VOSCTL_CACHE", str(tmp_path / "cache"))
    net = tiny_net()
    image, logits = torch.rand(1, 3, 44, 72) * 255, torch.randn(2, 1, 44, 72) * 3
    full = OpenVinoRefiner(net, threads=1)(image, logits)
    half = OpenVinoRefiner(net, threads=1, bfloat16=True)(image, logits)
    assert half.shape == full.shape
    assert not torch.equal(half, full)  # bfloat16 arithmetic
    assert (half - full).abs().max() < 0.05 * full.abs().max()
