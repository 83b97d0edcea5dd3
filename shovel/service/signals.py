"""Stop signals: the only module that touches `signal` (with _early.py, which catches them
first).

A handler records which signal arrived and sets an event, nothing else. The first SIGTERM,
SIGINT or SIGHUP sets `stop`; any later one sets `hurry` (stop waiting for the queue). Signals
that arrive before the event loop runs are recorded by a plain handler (_early.record) and
replayed when the loop attaches.

While a loop is attached, signals reach it through a wakeup pipe of their own, not through
`loop.add_signal_handler`: that one makes the loop's self-pipe the signal wakeup fd, and every
`call_soon_threadsafe` (each worker-thread completion: run_in_executor, to_thread) writes a
byte to the same socket. A few hundred unread bytes fill it; a signal arriving then has its byte
dropped ("Exception ignored when trying to write to the signal wakeup fd") and its handler never
runs, so under a flood of completions a SIGTERM could be lost and the stop never begin
(tests/process/test_signal_flood.py shows both). Only signals write to shovel's pipe, and it
holds 64 KiB of them, so a stop signal always reaches the loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType

from shovel import _early

# What asks shovel to stop: SIGTERM, SIGINT, and SIGHUP unless it was ignored at start (nohup).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(signal.Signals(s) for s in _early.stop_signals())


def _carried_by_wakeup_fd(_signum: int, _frame: FrameType | None) -> None:
    """While a loop is attached: the signal's byte in the wakeup pipe is what counts."""


def install_early() -> None:
    """Records stop signals until a loop attaches (and after it detaches): nothing is lost,
    and the default actions (KeyboardInterrupt, termination) never run."""
    _early.install()


def restore_defaults() -> None:
    """Gives the stop signals their default actions back (for `python -m shovel demo`, which
    runs no service itself: Ctrl-C raises KeyboardInterrupt, SIGTERM ends it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in STOP_SIGNALS:
        if sig != signal.SIGINT:
            signal.signal(sig, signal.SIG_DFL)
    _early.pending.clear()


def block_for_exit() -> None:
    """Ignores stop signals from now on. Called once the exit code is decided: the
    interpreter's teardown restores the default actions of handled signals, and a late SIGTERM
    would otherwise turn a clean exit 0 into "killed by SIGTERM". An ignored disposition is
    process-wide (any thread may be the one a signal is delivered to) and survives teardown."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopRequest:
    """What the stop signals asked for, as events the main task can wait on."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.received: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # The wakeup pipe (read end, write end) while attached, and the wakeup fd it replaced.
        self._pipe: tuple[int, int] | None = None
        self._previous_wakeup_fd = -1

    def on_signal(self, signum: int) -> None:
        """The handler: note the signal, set an event. Runs in the event loop."""
        self.received.append(signal.Signals(signum).name)
        if self.stop.is_set():
            self.hurry.set()
        else:
            self.stop.set()

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.stop.is_set()

    @property
    def first_signal(self) -> str | None:
        """Name of the first stop signal, if any."""
        return self.received[0] if self.received else None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Routes stop signals to this object, replaying any that arrived before. Must run in
        the main thread (the only one that may set the wakeup fd)."""
        # Held pending while the handlers change over, then delivered into the pipe.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                self._previous_wakeup_fd = signal.set_wakeup_fd(write_end)
            except ValueError:
                os.close(read_end)
                os.close(write_end)
                raise
            self._pipe = read_end, write_end
            self._loop = loop
            loop.add_reader(read_end, self._read_pipe)
            for sig in STOP_SIGNALS:
                signal.signal(sig, _carried_by_wakeup_fd)
            early = list(_early.pending)
            _early.pending.clear()
            for signum in early:
                self.on_signal(signum)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _read_pipe(self) -> None:
        """Reads the signal numbers the C-level handler wrote; runs in the event loop."""
        if self._pipe is None:
            return
        while True:
            try:
                data = os.read(self._pipe[0], 512)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                # Every signal with a Python handler writes its number here, not only ours.
                if signum in STOP_SIGNALS:
                    self.on_signal(signum)

    def detach(self) -> None:
        """Goes back to recording signals (a late SIGTERM must not kill a clean exit)."""
        # Keep stop signals pending while the handlers change over: none falls between the
        # pipe and the recorder.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if self._pipe is not None:
                # A signal already in the pipe still counts.
                self._read_pipe()
                signal.set_wakeup_fd(self._previous_wakeup_fd)
                if self._loop is not None:
                    self._loop.remove_reader(self._pipe[0])
                for fd in self._pipe:
                    os.close(fd)
                self._pipe = None
            self._loop = None
            install_early()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
