"""CPU threads that yield when idle: what keeps the tool from collapsing on a busy machine.

torch's OpenMP threads busy-wait between parallel regions by default. On 2 cores beside one other
CPU-bound process, the waiting threads took time slices from the one doing the work and from this
process's decode and encode threads: a run slowed from 0.28 to 0.56 s a frame (bear, engine only).
With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep: 0.37 s a frame loaded, about the share of the
CPU the other process leaves, and no slower idle (0.28 s). ONNX Runtime's threads are told the same
(engine.runtime). The variable is read once, when torch's OpenMP starts, so it must be set before
torch is imported; a value the user set is kept.

The pipeline computes on two threads at once (vosctl.pipeline): the network embeds the next frame
while the engine thread retrieves this one's labels, and the refinement thread refines the last.
Each thread's parallel regions get their own team of torch's (or OpenVINO's) threads, so with every
team as wide as the machine, 2 cores ran 4 to 6 threads. ``compute_threads`` gives each team half
the cores: on 2 cores (bear, 854x480, float32, interleaved runs) 15.3-15.9 -> 16.0-16.7 fps idle,
10.8-11.2 -> 11.3-11.4 with one competing process; ``fast`` and key frames gained as much or more.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and cgroups narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compute_threads(budget: int | None = None) -> int:
    """Threads for each compute team of the pipeline: half of ``budget`` (``--threads``; default
    every available core), at least one, so the network's team and the engine's share the cores."""
    return max(1, (budget or available_cores()) // 2)


def configure_threads() -> None:
    """Call before importing torch: OpenMP threads sleep instead of spinning while they wait."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
