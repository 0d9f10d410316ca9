"""The start of a run: the session is built, its network compiled, on a thread of its own while the
inputs are checked; errors from either side reach the caller, and no thread outlives a failed run."""

from __future__ import annotations

import threading

import pytest

from engine.errors import VosError
from engine.runtime import openvino_available
from engine.session import SessionConfig, VideoSession
from vosctl import pipeline
from vosctl.pipeline import segment_file
from vosctl.streams import Background

from . import corpus


def test_background_returns_the_value_and_raises_the_error_in_the_caller():
    caller = threading.get_ident()
    ran_on = []
    assert Background(lambda: ran_on.append(threading.get_ident()) or 7).result() == 7
    assert ran_on and ran_on[0] != caller

    def fail():
        raise VosError("no luck")

    failing = Background(fail)
    with pytest.raises(VosError, match="no luck"):
        failing.result()
    Background(fail).wait()  # waits, and keeps the error to itself


@pytest.mark.skipif(not openvino_available(), reason="onnx/openvino not installed")
def test_load_network_compiles_the_runtime_before_the_first_frame(tiny_model):
    session = VideoSession(tiny_model, SessionConfig(runtime="openvino", half=False))
    assert session.embedder._exported is None
    session.load_network()
    compiled = session.embedder._exported
    assert compiled is not None
    session.load_network()
    assert session.embedder._exported is compiled  # once


def test_load_network_is_nothing_for_torch(tiny_model):
    session = VideoSession(tiny_model, SessionConfig(runtime="torch", half=False))
    session.load_network()
    assert session.embedder._exported is None


def _session_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vosctl-session"]


def test_the_session_is_built_beside_the_checks(tmp_path, dog_small_clip, tiny_model, monkeypatch):
    clip, mask = dog_small_clip
    built_on, checked_on = [], []
    new_session, check = pipeline._new_session, pipeline.check_segment

    def spy_session(*args):
        built_on.append(threading.current_thread().name)
        return new_session(*args)

    def spy_check(**kwargs):
        checked_on.append(threading.current_thread().name)
        return check(**kwargs)

    monkeypatch.setattr(pipeline, "_new_session", spy_session)
    monkeypatch.setattr(pipeline, "check_segment", spy_check)
    result = segment_file(
        video=clip, mask=mask, model=tiny_model, config=SessionConfig(), device="cpu", masks_dir=tmp_path / "m"
    )
    assert result.frames == len(list((tmp_path / "m").glob("*.png"))) > 0
    assert built_on == ["vosctl-session"] and checked_on == [threading.current_thread().name]


def test_a_session_that_cannot_be_built_fails_the_run_cleanly(tmp_path, dog_small_clip, tiny_model, monkeypatch):
    clip, mask = dog_small_clip

    def broken(*_):
        raise VosError("the network would not compile")

    monkeypatch.setattr(pipeline, "_new_session", broken)
    before = corpus.listing(tmp_path)
    with pytest.raises(VosError, match="would not compile"):
        segment_file(
            video=clip, mask=mask, model=tiny_model, config=SessionConfig(), device="cpu", masks_dir=tmp_path / "m"
        )
    assert corpus.listing(tmp_path) == before
    assert not _session_threads()


def test_a_failed_check_is_the_error_and_waits_for_the_session(tmp_path, dog_small_clip, tiny_model, monkeypatch):
    """The check's error comes first, as before the session was built beside it; and the thread
    building the session has ended by the time the caller sees it."""
    clip, _ = dog_small_clip
    started = threading.Event()

    def slow_and_broken(*_):
        started.set()
        threading.Event().wait(0.2)
        raise VosError("the network would not compile")

    monkeypatch.setattr(pipeline, "_new_session", slow_and_broken)
    with pytest.raises(VosError, match="does not exist"):
        segment_file(video=clip, mask=tmp_path / "missing.png", model=tiny_model, config=SessionConfig(), device="cpu")
    assert started.is_set() and not _session_threads()


def test_the_cli_checks_its_inputs_once(tmp_path, dog_small_clip, run_cli, tiny_model_file, monkeypatch):
    """Before loading the model, so that bad arguments fail at once; segment_file takes that check's result."""
    from vosctl.commands import segment as command

    clip, mask = dog_small_clip
    calls = []
    check = command.check_segment

    def counted(**kwargs):
        calls.append(kwargs["video"])
        return check(**kwargs)

    monkeypatch.setattr(command, "check_segment", counted)
    monkeypatch.setattr(pipeline, "check_segment", counted)
    result = run_cli(["segment", clip, "--mask", mask, "--model", tiny_model_file, "--masks-dir", tmp_path / "m"])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert len(list((tmp_path / "m").glob("*.png"))) > 0
