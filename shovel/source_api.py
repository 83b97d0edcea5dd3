"""The contract every source keeps: the `Source` protocol, its errors, and the executor that runs
blocking file calls on daemon threads."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, Protocol, TypeVar

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


_P = ParamSpec("_P")
_T = TypeVar("_T")


class DaemonThreads(Executor):
    """Runs each call on a daemon thread of its own. File reads go through it so that a read
    stuck on a hung filesystem holds up neither the stop sequence nor the interpreter's exit
    (the default executor's threads are joined at exit)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=run, name="shovel-read", daemon=True).start()
        return future
