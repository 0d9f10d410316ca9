"""The learned boundary refiner: its network and file, the session refiner, and its training."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from engine import mask_refiner
from engine.bilateral_refiner import BilateralRefiner
from engine.errors import VosError
from engine.mask_refiner import (
    SHAPE_STEP,
    LearnedRefiner,
    RefinerConfig,
    aggregate,
    build_refiner_net,
    load_refiner,
    save_refiner,
)
from engine.refiners import RefinerChain, make_refiner
from engine.session import SessionConfig, VideoSession
from tests.test_trainer import make_davis
from trainer.refiner_train import RefinerTrainSettings, make_batch, simulate_coarse, train_refiner

TINY = RefinerConfig(encoder="tiny", width=8, fine=4)


def tiny_net(seed: int = 1):
    torch.manual_seed(seed)
    net = build_refiner_net(TINY)
    for p in net.coarse.parameters():  # non-zero head, so a refined window differs from its input
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def two_object_probs(height: int = 40, width: int = 96) -> torch.Tensor:
    """(3, H, W): background and two squares side by side in the left half, soft at their edges."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    left = torch.sigmoid((10 - (xx - 16).abs().maximum((yy - 20).abs())).float())
    right = torch.sigmoid((8 - (xx - 40).abs().maximum((yy - 20).abs())).float())
    objects = torch.stack([left, right]) * 0.999
    return aggregate(objects)


def test_aggregate_sums_to_one_and_is_exact_for_one_object():
    p = torch.rand(1, 5, 7)
    single = aggregate(p)
    assert torch.allclose(single[1], p) and torch.allclose(single[0], 1 - p)
    several = aggregate(torch.rand(3, 5, 7))
    assert torch.allclose(several.sum(0), torch.ones(5, 7), atol=1e-6)
    assert (several >= 0).all()


def test_file_round_trip_gives_the_same_refinement(tmp_path):
    net = tiny_net()
    path = tmp_path / "refiner.pt"
    save_refiner(net, path)
    loaded = load_refiner(path)
    image, logits = torch.rand(2, 3, 32, 48) * 255, torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(net(image, logits).half().float(), loaded(image, logits), atol=5e-2)
        assert loaded(image, logits).shape == (2, 1, 32, 48)
    # The encoder is rebuilt from its package, never stored.
    assert not any(k.startswith("encoder.") for k in torch.load(path, weights_only=True)["head"])


def test_foreign_and_mismatched_files_are_refused(tmp_path):
    with pytest.raises(VosError, match="does not exist"):
        load_refiner(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(VosError, match="not a vosctl refiner file"):
        load_refiner(tmp_path / "foreign.pt")
    save_refiner(tiny_net(), tmp_path / "small.pt")
    payload = torch.load(tmp_path / "small.pt", weights_only=True)
    payload["config"]["width"] = 12  # the stored head no longer fits the config
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(VosError, match="do not fit"):
        load_refiner(tmp_path / "bad.pt")


def test_confident_pixels_keep_their_probabilities_and_the_window_is_refined():
    refiner = LearnedRefiner(tiny_net(), margin=2)
    frame = (np.random.default_rng(0).random((40, 96, 3)) * 255).astype(np.uint8)
    probs = two_object_probs()
    out = refiner(frame, probs)
    assert out.shape == probs.shape and torch.allclose(out.sum(0), torch.ones(40, 96), atol=1e-5)
    margin = probs.sort(0).values
    unsure = (margin[-1] - margin[-2]) < 0.98
    ys, xs = torch.nonzero(unsure, as_tuple=True)
    outside = torch.ones_like(unsure)
    outside[max(0, int(ys.min()) - 2) : int(ys.max()) + 3, max(0, int(xs.min()) - 2) : int(xs.max()) + 3] = False
    assert outside.any() and torch.equal(out[:, outside], probs[:, outside].float())
    assert not torch.allclose(out[:, unsure], probs[:, unsure], atol=1e-3)
    # numpy in, numpy out; an all-confident frame comes back unchanged
    as_numpy = refiner(frame, probs.numpy())
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, out.numpy(), atol=1e-6)
    hard = torch.zeros(3, 40, 96)
    hard[0] = 1
    assert torch.equal(refiner(frame, hard), hard)


def test_a_larger_frame_is_refined_at_the_working_size():
    refiner = LearnedRefiner(tiny_net(), margin=2, work_size=32)
    frame = np.zeros((80, 192, 3), np.uint8)
    probs = torch.nn.functional.interpolate(two_object_probs()[None], size=(80, 192), mode="bilinear")[0]
    assert refiner(frame, probs).shape == (3, 80, 192)
    with pytest.raises(VosError, match="same height and width"):
        refiner(frame[:40], probs)


def test_a_small_frame_is_enlarged_towards_the_working_size_at_most_twice(monkeypatch):
    monkeypatch.setattr(mask_refiner, "SHAPE_STEP", 4)  # the working size itself, not padded
    net = tiny_net()
    seen = []
    features = net.features
    net.features = lambda image: seen.append(tuple(image.shape[-2:])) or features(image)
    frame = np.zeros((40, 96, 3), np.uint8)
    LearnedRefiner(net, margin=0, work_size=144)(frame, two_object_probs())
    LearnedRefiner(net, margin=0, work_size=960)(frame, two_object_probs())
    LearnedRefiner(net, margin=0, work_size=0)(frame, two_object_probs())
    LearnedRefiner(net, margin=0, work_size=960, enlarge=1.0)(frame, two_object_probs())  # never enlarged
    (h1, w1), (h2, w2), (h0, w0), (h3, w3) = seen[::2]  # two objects, a call each: the first one's window
    assert abs(w1 / w0 - 1.5) < 0.1 and abs(w2 / w0 - 2.0) < 0.1 and abs(h2 / h0 - 2.0) < 0.2
    assert (h3, w3) == (h0, w0)


def test_objects_far_apart_are_each_refined_in_their_own_window_as_if_alone(monkeypatch):
    monkeypatch.setattr(mask_refiner, "SHAPE_STEP", 4)
    net = tiny_net()
    seen = []
    features = net.features
    net.features = lambda image: seen.append(tuple(image.shape[-2:])) or features(image)
    yy, xx = torch.meshgrid(torch.arange(60), torch.arange(240), indexing="ij")

    def square(x: int) -> torch.Tensor:
        return torch.sigmoid((8 - (xx - x).abs().maximum((yy - 30).abs())).float()) * 0.999

    frame = (np.random.default_rng(0).random((60, 240, 3)) * 255).astype(np.uint8)
    refiner = LearnedRefiner(net, margin=4, work_size=0)
    both = refiner(frame, aggregate(torch.stack([square(30), square(200)])))
    assert len(seen) == 2 and all(w < 100 for _, w in seen), seen  # two small windows, not the frame
    alone = refiner(frame, aggregate(square(30)[None]))
    assert torch.allclose(both[1, :, :100], alone[1, :, :100], atol=1e-3)
    assert torch.allclose(both.sum(0), torch.ones(60, 240), atol=1e-5)


def test_the_network_sees_the_window_padded_to_the_shape_step_and_its_padding_is_dropped(monkeypatch):
    # A compiled graph prepares kernels for each new input size: the window is padded to multiples
    # of SHAPE_STEP. What the padding changes lies within the network's reach of the padded edges.
    net = tiny_net()
    seen = []
    features = net.features
    net.features = lambda image: seen.append(tuple(image.shape[-2:])) or features(image)
    frame = (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)
    one_object = aggregate(two_object_probs()[1:2])  # one window, whose edges are the refined region's
    probs = torch.nn.functional.interpolate(one_object[None], size=(120, 200), mode="bilinear")[0]
    padded = LearnedRefiner(net, margin=2, work_size=0)(frame, probs)
    assert seen and all(h % SHAPE_STEP == 0 and w % SHAPE_STEP == 0 for h, w in seen), seen
    assert seen[0] != (120, 200), "the window is not the whole frame"
    monkeypatch.setattr(mask_refiner, "SHAPE_STEP", 4)
    exact = LearnedRefiner(net, margin=2, work_size=0)(frame, probs)
    assert padded.shape == exact.shape
    assert torch.allclose(padded.sum(0), torch.ones(120, 200), atol=1e-5)
    changed = (padded - exact).abs().amax(0) > 1e-4
    assert changed.any(), "the padding reaches the window's last rows or columns"
    ys, xs = torch.nonzero(changed, as_tuple=True)
    rows, cols = torch.nonzero((padded - probs).abs().amax(0) > 1e-6, as_tuple=True)  # the refined window
    reach = torch.minimum(rows.max() - ys, cols.max() - xs)  # from the window's last row or column
    assert int(reach.max()) <= 24 < int(rows.max() - rows.min()), "only near the padded edges"


def test_make_refiner_builds_the_learned_chain_from_a_file(tmp_path):
    path = tmp_path / "refiner.pt"
    save_refiner(tiny_net(), path)
    learned = make_refiner("learned", "cpu", refiner_file=str(path))
    assert isinstance(learned, LearnedRefiner)
    chain = make_refiner("learned+bilateral", "cpu", refiner_file=str(path), crop=True)
    assert isinstance(chain, RefinerChain)
    assert [type(s) for s in chain.stages] == [LearnedRefiner, BilateralRefiner]
    assert chain.stages[0].net is learned.net  # read once per process
    save_refiner(tiny_net(seed=2), path)  # rewritten: read again
    os.utime(path, ns=(1, 1))
    assert make_refiner("learned", "cpu", refiner_file=str(path)).net is not learned.net


def test_a_session_refines_with_the_configured_refiner_file(tmp_path, tiny_model):
    path = tmp_path / "refiner.pt"
    save_refiner(tiny_net(), path)
    frames = (np.random.default_rng(1).random((3, 48, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = 1
    results = {}
    for refine in ("none", "learned"):
        config = SessionConfig(max_size=64, refine=refine, refiner_file=str(path), half=False)
        session = VideoSession(tiny_model, config)
        session.step(frames[0], mask)
        results[refine] = [session.step(f) for f in frames[1:]]
    assert isinstance(VideoSession(tiny_model, config).refiner, LearnedRefiner)
    assert any(not torch.allclose(a, b) for a, b in zip(results["none"], results["learned"], strict=True))
    with pytest.raises(VosError, match="Unknown refinement"):
        SessionConfig(refine="learned+guided")


def test_simulated_coarse_input_is_a_blurred_approximation_of_the_mask():
    mask = torch.zeros(96, 96)
    mask[20:70, 30:60] = 1
    rng = np.random.default_rng(0)
    coarse = simulate_coarse(mask, rng)
    assert coarse.shape == mask.shape and coarse.min() >= 0 and coarse.max() <= 1
    iou = ((coarse > 0.5) & (mask > 0)).sum() / ((coarse > 0.5) | (mask > 0)).sum()
    assert 0.6 < float(iou) < 1.0  # close to the mask, never exactly it
    assert ((coarse > 0.02) & (coarse < 0.98)).any()


def test_the_simulated_grid_has_the_cells_asked_for():
    """--cells: a coarser simulated grid blurs the mask's boundary over a wider band."""
    mask = torch.zeros(120, 120)
    mask[20:100, 30:90] = 1

    def band(cells: tuple[int, int]) -> float:
        widths = []
        for seed in range(8):
            coarse = simulate_coarse(mask, np.random.default_rng(seed), cells)
            widths.append(float(((coarse > 0.02) & (coarse < 0.98)).float().mean()))
        return float(np.mean(widths))

    assert band((4, 4)) < band((14, 14))


def test_batches_are_a_function_of_seed_and_step(tmp_path):
    from trainer.refiner_train import load_frames

    root = make_davis(tmp_path / "davis", frames=3, size=64)
    frames = load_frames(root, ["a", "b"], every=1)
    first = make_batch(frames, batch=2, crop=32, seed=3, step=5)
    again = make_batch(frames, batch=2, crop=32, seed=3, step=5)
    other = make_batch(frames, batch=2, crop=32, seed=3, step=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    assert first[0].shape == (2, 3, 32, 32) and first[2].shape == (2, 1, 32, 32)
    # --scale and --cells (the defaults: 0.4-1.25, 7-11) change the samples, not their shapes
    scaled = make_batch(frames, batch=2, crop=32, seed=3, step=5, scale=(0.5, 0.6), cells=(5, 6))
    assert scaled[0].shape == first[0].shape and not torch.equal(scaled[1], first[1])
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            first, make_batch(frames, batch=2, crop=32, seed=3, step=5, scale=(0.4, 1.25), cells=(7, 11)), strict=True
        )
    )


def write_coarse(folder, name: str, grids: list[torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(grids, folder / f"{name}.pt")


def test_real_coarse_inputs_replace_the_simulated_ones_for_their_share(tmp_path):
    """--coarse-dir: a sample of a frame with real grids takes its object's channel, upsampled and
    cropped with the frame; a constant channel stays that constant, which no simulation gives."""
    from trainer.refiner_train import load_frames

    root = make_davis(tmp_path / "davis", names=("a", "b"), frames=3, size=64, objects=2)
    coarse = tmp_path / "coarse"
    for name in ("a", "b"):  # channel 1 (object id 1) 0.25, channel 2 (id 2) 0.75, on an 8x8 grid
        write_coarse(coarse, name, [torch.stack([torch.full((8, 8), v) for v in (0.0, 0.25, 0.75)])] * 3)
    real = load_frames(root, ["a", "b"], every=1, coarse_dir=coarse)
    assert real[0].channels == {1: 1, 2: 2}
    given = make_batch(real, batch=6, crop=32, seed=0, step=0, coarse_share=1.0)[1]
    for sample in given:  # each sample is one object's channel, whole
        assert any(torch.allclose(sample, torch.full_like(sample, v)) for v in (0.25, 0.75))
    simulated = make_batch(real, batch=6, crop=32, seed=0, step=0, coarse_share=0.0)[1]
    assert not any(torch.allclose(sample, torch.full_like(sample, float(sample.mean()))) for sample in simulated)
    # a share of 0 draws the samples of frames without real grids: the recipe's own, unchanged
    plain = load_frames(root, ["a", "b"], every=1)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            make_batch(plain, batch=6, crop=32, seed=0, step=0),
            make_batch(real, batch=6, crop=32, seed=0, step=0, coarse_share=0.0),
            strict=True,
        )
    )
    # half the share: some samples real, some simulated
    mixed = make_batch(real, batch=16, crop=32, seed=0, step=1, coarse_share=0.5)[1]
    constant = [torch.allclose(s, torch.full_like(s, float(s.mean()))) for s in mixed]
    assert any(constant) and not all(constant)


def test_real_coarse_grids_must_cover_every_frame(tmp_path):
    from trainer.refiner_train import load_frames

    root = make_davis(tmp_path / "davis", names=("a",), frames=3, size=64)
    with pytest.raises(VosError, match="coarse_maps"):
        load_frames(root, ["a"], every=1, coarse_dir=tmp_path / "none")
    write_coarse(tmp_path / "short", "a", [torch.zeros(2, 8, 8)] * 2)
    with pytest.raises(VosError, match="holds 2 frames"):
        load_frames(root, ["a"], every=1, coarse_dir=tmp_path / "short")
    with pytest.raises(VosError, match="coarse-share"):
        RefinerTrainSettings(data=root, out=tmp_path, coarse_share=1.5)


def test_training_lowers_the_loss_and_writes_a_loadable_file(tmp_path):
    root = make_davis(tmp_path / "davis", frames=3, size=64)
    losses = []

    def log(line: str) -> None:
        if line.startswith("step"):
            losses.append(float(line.split("loss ")[1].split()[0]))

    settings = RefinerTrainSettings(
        data=root, out=tmp_path / "out", steps=100, batch=4, crop=32, every=1, threads=1, config=TINY, lr=1e-2
    )
    path = train_refiner(settings=settings, log=log)
    assert path.is_file() and isinstance(load_refiner(path), torch.nn.Module)
    assert losses[-1] < losses[0]


def test_cli_trains_a_refiner(tmp_path, run_cli):
    root = make_davis(tmp_path / "davis", frames=3, size=64)
    out = tmp_path / "out"
    args = ["train-refiner", "--data", root, "--out", out, "--steps", "2", "--batch", "2", "--crop", "32"]
    result = run_cli([*args, "--encoder", "tiny", "--threads", "1", "--width", "8", "--fine", "4"])
    assert result.exit_code == 0, result.output
    assert (out / "refiner.pt").is_file() and "wrote" in result.output
    net = load_refiner(out / "refiner.pt")
    assert (net.config.width, net.config.fine) == (8, 4) and net.fine[-1].in_channels == 4
    bad = run_cli([*args, "--crop", "34", "--encoder", "tiny"])
    assert bad.exit_code == 1 and "multiple of 4" in bad.output
    coded = run_cli([*args, "--encoder", "tiny", "--threads", "1", "--codec-crf", "23"])
    assert coded.exit_code == 0, coded.output
    assert sorted(p.name for p in (out / "codec-crf23").iterdir()) == ["a", "b", "c"]  # the frames it trained on
    for option, value, said in (
        ("--cells", "9,5", "MIN <= MAX"),
        ("--cells", "x", "MIN,MAX"),
        ("--scale", "0,1", "0 <"),
    ):
        refused = run_cli([*args, "--encoder", "tiny", option, value])
        assert refused.exit_code == 1 and said in refused.output, refused.output
    scaled = run_cli([*args, "--encoder", "tiny", "--threads", "1", "--scale", "0.5,0.8", "--cells", "5,8"])
    assert scaled.exit_code == 0, scaled.output
    write_coarse(tmp_path / "coarse", "a", [torch.full((2, 8, 8), 0.5)] * 3)
    missing = run_cli([*args, "--encoder", "tiny", "--coarse-dir", tmp_path / "coarse"])
    assert missing.exit_code == 1 and "'b'" in missing.output  # every training sequence needs its grids
    for name in ("b", "c"):
        write_coarse(tmp_path / "coarse", name, [torch.full((2, 8, 8), 0.5)] * 3)
    real = run_cli([*args, "--encoder", "tiny", "--threads", "1", "--coarse-dir", tmp_path / "coarse"])
    assert real.exit_code == 0, real.output
