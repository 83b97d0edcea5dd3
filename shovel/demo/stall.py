"""Waits that end when they stop getting anywhere, not at a fixed time.

On a loaded machine a fixed deadline cuts short what is only slow, and the demo then counted as
lost what it had not yet counted. Each of its waits on a child or on the NATS server instead
names the numbers that grow while the wait gets somewhere, and gives up only when none of them
has grown for a while; what it gives up on is then reported as such (hung, or not counted).
"""

from __future__ import annotations

import time


class StallClock:
    """The clock of one wait bounded by progress."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        # The highest value seen of each mark, by its position in `moving`'s arguments.
        self._highest: dict[int, int] = {}
        self._last_progress = time.monotonic()

    def moving(self, *marks: int | None) -> bool:
        """Whether the wait should go on: False once none of `marks` (numbers that grow as the
        wait gets somewhere; None: not known this time) has gone past its highest for
        `stall_s`. A wait whose marks can only grow so far always ends."""
        now = time.monotonic()
        for i, mark in enumerate(marks):
            if mark is not None and (i not in self._highest or mark > self._highest[i]):
                self._highest[i] = mark
                self._last_progress = now
        return now - self._last_progress <= self.stall_s
