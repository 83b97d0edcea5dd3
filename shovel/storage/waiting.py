"""What the two stores' asyncio fronts share: waits that the native client's wake-ups end, and
each write's time from hand-over to durable, for the metrics."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class Progress:
    """Waiters on a native client's progress, and the writes handed over and not yet durable
    (by sequence number). Lives on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: list[asyncio.Future[None]] = []
        # (seq, submit time) of writes not yet durable, to time submit -> durable.
        self._submitted: deque[tuple[int, float]] = deque()
        self._observers: list[Callable[[float], None]] = []
        self.last_seq = 0

    def on_durable(self, observer: Callable[[float], None]) -> None:
        """Calls `observer(seconds)` with each write's submit-to-durable time."""
        self._observers.append(observer)

    def made(self, durable_seq: int) -> None:
        """The client says writes up to `durable_seq` are durable (or something else changed):
        times them and wakes every waiter."""
        now = time.monotonic()
        while self._submitted and self._submitted[0][0] <= durable_seq:
            _, submitted_at = self._submitted.popleft()
            for observe in self._observers:
                observe(now - submitted_at)
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def next(self) -> None:
        """Waits for the client's next wake-up."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def hand_over(self, submit: Callable[[], int | None]) -> int:
        """Calls `submit` until the client takes the write (None: full, wait for progress);
        returns its sequence number."""
        while True:
            seq = submit()
            if seq is not None:
                self._submitted.append((seq, time.monotonic()))
                self.last_seq = seq
                return seq
            await self.next()
