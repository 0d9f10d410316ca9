"""The CLI's thread policy: idle OpenMP threads sleep, unless the user chose otherwise; the network's
and the engine's thread teams share the cores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vosctl import threads
from vosctl.threads import compute_threads, configure_threads


def test_configure_threads_sets_passive_waiting_and_keeps_a_users_choice(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_sets_the_policy_before_torch_loads():
    """OpenMP reads the variable once, when torch loads: it must be set by then."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = """
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Watch())
import vosctl.cli
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['PASSIVE']"


def test_the_cli_leaves_the_garbage_collector_on_and_the_libraries_frozen_out_of_it():
    """The collector is off while the CLI's libraries load, then on again with what they made
    frozen: a later full collection does not walk them again."""
    code = "import gc, vosctl.cli; print(gc.isenabled(), gc.get_freeze_count() > 100_000)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True"


@pytest.mark.parametrize(("budget", "each"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_compute_threads_halves_the_budget(budget, each):
    assert compute_threads(budget) == each


def test_compute_threads_defaults_to_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5}, raising=False)
    assert compute_threads() == 3
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {7}, raising=False)
    assert compute_threads() == 1
