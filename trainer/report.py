"""What rank 0 reports while training: a rich progress bar and a JSON-lines metrics file.

Other ranks get a reporter that does nothing, so the loop never asks which rank it is on to log.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

METRICS_NAME = "metrics.jsonl"


class Reporter:
    """Progress (loss, lr, it/s, ETA) on stderr and ``out/metrics.jsonl``; inert when not ``enabled``."""

    def __init__(self, *, out: Path, first: int, total: int, log_every: int, progress: bool, enabled: bool):
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.path = Path(out) / METRICS_NAME
        self.console = Console(stderr=True, highlight=False)
        self.first = first
        self.total = total
        self._progress: Progress | None = None
        self._task = None
        self._start = time.perf_counter()
        self._window: list[tuple[int, float]] = []
        if enabled and progress:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[its]:.2f} it/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.first, loss=0.0, lr=0.0, its=0.0
            )
        self._start = time.perf_counter()
        self._window = [(self.first, self._start)]
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def rate(self) -> float:
        """Steps per second over the last few logged intervals (validation time included)."""
        (s0, t0), (s1, t1) = self._window[0], self._window[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def step(self, step: int, *, loss: float, lr: float, extra: dict | None = None) -> None:
        """Log the state after ``step`` finished steps (the loop calls this every ``log_every`` steps)."""
        if not self.enabled:
            return
        self._window = (self._window + [(step, time.perf_counter())])[-6:]
        its = self.rate()
        self.record({"step": step, "loss": loss, "lr": lr, "it_s": its, **(extra or {})})
        if self._progress is None or not self.console.is_terminal:
            self.console.log(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {its:.2f} it/s")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss, lr=lr, its=its)

    def record(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.perf_counter() - self._start, 3), **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.log(text)
