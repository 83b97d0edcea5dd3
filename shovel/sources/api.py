"""The contract every source keeps: the `Source` protocol, its errors, and the executor that runs
blocking file calls on daemon threads; and the contract of a source that is acknowledged (a
message broker): `AcknowledgedSource`, with `AckProgress` for its metrics."""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from shovel.batches import Piece


class SourceError(Exception):
    """The source cannot be opened or read."""


class SourceMismatch(SourceError):
    """The source is not the one the output directory was storing (or cannot continue it)."""


class Source(Protocol):
    """Something that yields pieces (batches, and lines too long to store) from an offset."""

    description: str
    replayable: bool

    def resume(self, committed_offset: int, descriptor: str) -> str:
        """Checks that this source continues what the checkpoint describes (`descriptor` is
        the text the checkpoint holds, "" if none) and prepares reading from
        `committed_offset`. Blocking. Returns a phrase for the start-up log line. Raises
        SourceMismatch when resuming would store a torn, skipped or foreign record."""
        ...

    def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        """Pieces from `start_offset` on, in source order; ends with a finite source."""
        ...

    def stop_tail(self) -> list[Piece]:
        """After the reader was stopped: the pieces of data already consumed but not yet
        yielded (a partial last line). Empty for a replayable source, which reads it again."""
        ...


@dataclass(slots=True)
class AckProgress:
    """What a source that is acknowledged has done, for metrics (read at scrape time)."""

    # Messages delivered (redeliveries included); deliveries acknowledged (once durable, or
    # at once for a message already stored here: counted once the server confirms it, or once
    # its acknowledgement floor passes it, whichever comes first); delivered more than once;
    # skipped as already stored here; given back at a stop.
    fetched: int = 0
    acked: int = 0
    redelivered: int = 0
    skipped: int = 0
    nacked: int = 0
    # From the server: messages not yet delivered, and delivered but not acknowledged.
    consumer_pending: int = 0
    consumer_ack_pending: int = 0
    # When the reader began to wait for room (time.monotonic(); 0: it is not waiting), and
    # how many of its waits lasted long enough to be logged as a stall.
    stall_started: float = 0.0
    stalls: int = 0
    # Called with each message's fetch-to-acknowledged time (the runner sets it).
    ack_latency: Callable[[float], None] = field(default=lambda _s: None)


@runtime_checkable
class AcknowledgedSource(Protocol):
    """A source that must be told what is durable (a message broker): it connects before the
    pipeline starts, runs a task of its own beside reader and storage that acknowledges what
    storage made durable, and ends after storage is closed (see runner.py for the order)."""

    progress: AckProgress

    async def open(self) -> str:
        """Connects; returns a phrase for the start-up log line. Raises SourceError, or
        SourceMismatch when the source is not the one the checkpoint describes."""
        ...

    def durable_progress(self) -> None:
        """Storage made something durable (called on the event loop)."""
        ...

    async def run_acks(self, records_durable: Callable[[], int]) -> None:
        """Acknowledges what is durable until cancelled; `records_durable()` counts the
        records of this run that storage made durable, in the order they were handed over."""
        ...

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        """After storage was closed: acknowledges what is durable, gives back the rest, and
        closes the connection, within `timeout_s`."""
        ...

    async def close(self) -> None:
        """Closes the connection without acknowledging (a run that never started)."""
        ...


_P = ParamSpec("_P")
_T = TypeVar("_T")


class DaemonThreads(Executor):
    """Runs calls on daemon threads, so that a read stuck on a hung filesystem holds up neither
    the stop sequence nor the interpreter's exit (the default executor's threads are joined at
    exit). Threads are reused: an idle one takes the next call, and a new one is started only
    when all are busy, so a stuck call keeps its own thread and never delays the others.
    Starting a thread per call would cost the event loop a thread start (and its wait for the
    thread to run) on every chunk read."""

    def __init__(self) -> None:
        self._forget_threads()
        _executors.add(self)

    def _forget_threads(self) -> None:
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        # Threads waiting for a call and not yet promised one by submit().
        self._idle = 0

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                self._now_idle()
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                # Idle before the caller is woken: its next call then finds this thread.
                self._now_idle()
                future.set_exception(e)
            else:
                self._now_idle()
                future.set_result(result)

        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._calls.put(run)
        if start:
            threading.Thread(target=self._serve, name="shovel-read", daemon=True).start()
        return future

    def _now_idle(self) -> None:
        # Counted as idle while it goes back to the queue: a call submitted meanwhile waits
        # there for it.
        with self._lock:
            self._idle += 1

    def _serve(self) -> None:
        while True:
            self._calls.get()()


_executors: weakref.WeakSet[DaemonThreads] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child has none of its parent's threads: idle ones must not be counted on.
    for executor in list(_executors):
        executor._forget_threads()


os.register_at_fork(after_in_child=_after_fork_in_child)
