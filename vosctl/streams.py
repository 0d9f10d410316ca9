"""Decode ahead and encode behind, each in its own thread, so the network is not kept waiting;
and one call run beside the caller (:class:`Background`: the session built while the inputs are checked).

Both queues are bounded, so memory stays flat in the video's length whatever the speed of either
side. An exception on a thread is raised again in the caller's thread, at its next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Prefetch(Generic[T]):
    """Iterates ``items`` on a thread, at most ``size`` ahead of the consumer."""

    def __init__(self, items: Iterable[T], size: int = 4, *, name: str = "vosctl-decode") -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(items),), name=name, daemon=True)
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer
            self._put(_Failure(error))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        while True:
            value = self._queue.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value

    def close(self) -> None:
        """Stop the thread (it finishes the item it is producing) and wait for it."""
        self._stop.set()
        self._thread.join()


class Worker:
    """Runs ``job(*args)`` calls in order on one thread; at most ``size`` wait to run."""

    def __init__(self, job: Callable[..., None], size: int = 4, *, inline: bool = False) -> None:
        self._job = job
        self._inline = inline  # run each call in the caller's thread instead
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vosctl-encode", daemon=True)
        if not inline:
            self._thread.start()

    def _run(self) -> None:
        while True:
            args = self._queue.get()
            if args is _END:
                return
            if self._error is None:
                try:
                    self._job(*args)
                except BaseException as error:  # raised again in the caller's thread
                    self._error = error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, *args) -> None:
        self._raise()
        if self._inline:
            self._job(*args)
        else:
            self._queue.put(args)

    def finish(self) -> None:
        """Wait until every submitted call has run; raise the first error one of them raised."""
        if not self._inline:
            self._queue.put(_END)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Skip what has not run yet and wait for the thread to end."""
        self._error = self._error or _Aborted()
        if self._inline or not self._thread.is_alive():
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_END)
        self._thread.join()


class Background(Generic[T]):
    """``make()`` run on a thread of its own; :meth:`result` waits for it and returns its value or
    raises its error."""

    def __init__(self, make: Callable[[], T], *, name: str = "vosctl-start") -> None:
        self._make = make
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._make()
        except BaseException as error:  # raised again in the caller's thread
            self._error = error

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self) -> None:
        """Wait for the call to end, keeping whatever it raised to itself (the caller has an error of its own)."""
        self._thread.join()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Aborted(Exception):
    pass
