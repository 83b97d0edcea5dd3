"""A flood of thread-to-loop notifications, loaded into a subprocess by test_signal_flood.py.

Every worker-thread completion (run_in_executor, to_thread) reaches the event loop through
`call_soon_threadsafe`, which writes one byte into the loop's self-pipe; thousands a second
keep that socket full. asyncio's `add_signal_handler` makes the same socket the signal wakeup
fd, so a signal arriving while it is full has its byte dropped ("Exception ignored when trying
to write to the signal wakeup fd") and its handler never runs. `install()` (called from a
generated sitecustomize) makes every new event loop flooded from threads; how often the flood
found the self-pipe full is kept in the file named by FLOOD_REPORT_ENV. `control()` is the
control: a plain `add_signal_handler` program under the same flood (the test runs it with
`python -c`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from pathlib import Path

FLOOD_REPORT_ENV = "WAKEUP_FLOOD_REPORT"
FLOOD_THREADS = 4
# Notifications sent between two probes of the self-pipe.
BURST = 500


def _nothing() -> None:
    pass


class _Report:
    """How many probes found the self-pipe full, written in place for the test to read."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._lock = threading.Lock()
        self.full = 0

    def found_full(self) -> None:
        with self._lock:
            self.full += 1
            os.pwrite(self._fd, b"%20d\n" % self.full, 0)


def read_full_count(path: Path) -> int:
    """How many probes found the self-pipe full so far (0 before the flood started)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def _flood(loop: asyncio.AbstractEventLoop, report: _Report) -> None:
    # The write end of the loop's self-pipe, where call_soon_threadsafe writes its byte: probed
    # directly to see whether it is full (call_soon_threadsafe hides the error).
    csock: socket.socket = loop._csock  # type: ignore[attr-defined]
    while not loop.is_running():
        if loop.is_closed():
            return
        threading.Event().wait(0.001)
    while True:
        try:
            for _ in range(BURST):
                loop.call_soon_threadsafe(_nothing)
            csock.send(b"\0")
        except BlockingIOError:
            report.found_full()
        except (RuntimeError, OSError):
            # The loop was closed: the process is exiting.
            return


class _FloodedPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, report: _Report) -> None:
        super().__init__()
        self._report = report

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        for i in range(FLOOD_THREADS):
            threading.Thread(
                target=_flood, args=(loop, self._report), name=f"flood-{i}", daemon=True
            ).start()
        return loop


def install() -> None:
    """Floods every event loop created from now on (when FLOOD_REPORT_ENV is set)."""
    path = os.environ.get(FLOOD_REPORT_ENV)
    if path:
        asyncio.set_event_loop_policy(_FloodedPolicy(_Report(Path(path))))


async def control() -> None:
    """The control: waits for SIGTERM through asyncio's own add_signal_handler, writing a line
    on stdout each time its handler runs, until killed."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, _say, "handled")
    _say("ready")
    await asyncio.Event().wait()


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()
