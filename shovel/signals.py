"""Stop signals: the only module that touches `signal`.

A handler records which signal arrived and sets an event, nothing else. The first SIGTERM or
SIGINT sets `stop`; any later one sets `hurry` (stop waiting for the queue). Signals that arrive
before the event loop runs are recorded by a plain handler and replayed when the loop attaches.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

# Signals received while no event loop was attached, in arrival order.
_pending: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def install_early() -> None:
    """Records stop signals until a loop attaches (and after it detaches): nothing is lost,
    and the default actions (KeyboardInterrupt, termination) never run."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


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
        """Routes stop signals to this object, replaying any that arrived before."""
        self._loop = loop
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)
        early = list(_pending)
        _pending.clear()
        for signum in early:
            self.on_signal(signum)

    def detach(self) -> None:
        """Goes back to recording signals (a late SIGTERM must not kill a clean exit)."""
        # remove_signal_handler restores the default actions for a moment: keep stop signals
        # pending across that moment.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if self._loop is not None:
                for sig in STOP_SIGNALS:
                    self._loop.remove_signal_handler(sig)
                self._loop = None
            install_early()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
