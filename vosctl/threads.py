"""CPU threads that yield when idle: what keeps the tool from collapsing on a busy machine.

torch's OpenMP threads busy-wait between parallel regions by default. On 2 cores beside one other
CPU-bound process, the waiting threads took time slices from the one doing the work and from this
process's decode and encode threads: a run slowed from 0.28 to 0.56 s a frame (bear, engine only).
With ``OMP_WAIT_POLICY=PASSIVE`` idle threads sleep: 0.37 s a frame loaded, about the share of the
CPU the other process leaves, and no slower idle (0.28 s). ONNX Runtime's threads are told the same
(engine.runtime). The variable is read once, when torch's OpenMP starts, so it must be set before
torch is imported; a value the user set is kept.
"""

from __future__ import annotations

import os


def configure_threads() -> None:
    """Call before importing torch: OpenMP threads sleep instead of spinning while they wait."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
