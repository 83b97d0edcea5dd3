"""The one pool of daemon threads that runs shovel's blocking file calls (a source's reads and
checks, rejected lines, the stop reports of the service and of the NATS source): a call stuck
on a hung filesystem holds up neither the event loop, nor the stop sequence, nor the
interpreter's exit. (The storage client's open and close are bounded by the client itself and
run on asyncio's default executor.)"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

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
            threading.Thread(target=self._serve, name="shovel-io", daemon=True).start()
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


# The pool every blocking call of the service runs on.
THREADS = DaemonThreads()


async def off_loop(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)` on the pool, awaited from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        THREADS, functools.partial(fn, *args, **kwargs)
    )
