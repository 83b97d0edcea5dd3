"""The bounded queue that carries batches from the reader task to the storage task.

"No more items" is said by closing the queue, not by a magic value. A batch the reader held
when it was cancelled is not dropped: `spill` keeps it, past the bound, to be drained last.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shovel.batches import Batch


class BatchQueue:
    """A bounded `asyncio.Queue` of batches that can be closed."""

    def __init__(self, max_batches: int) -> None:
        # None is the internal wake-up put by close(); it never reaches a caller.
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(max_batches)
        self._spilled: deque[Batch] = deque()
        self._closed = False
        self.records = 0
        self.batches = 0

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    async def put(self, batch: Batch) -> None:
        """Waits for room, then enqueues. If cancelled while waiting, the batch is spilled
        (kept) rather than lost, and the cancellation goes on."""
        if self._closed:
            raise RuntimeError("put() on a closed BatchQueue")
        try:
            await self._queue.put(batch)
        except asyncio.CancelledError:
            self.spill(batch)
            raise
        self._count(batch, 1)

    def spill(self, batch: Batch) -> None:
        """Keeps `batch` past the bound, to be taken after everything queued. For the reader's
        last batch when it is cancelled: read data is never dropped."""
        self._spilled.append(batch)
        self._count(batch, 1)

    def _count(self, batch: Batch, sign: int) -> None:
        self.records += sign * batch.records
        self.batches += sign

    def close(self) -> None:
        """No more puts; get() returns None once everything queued is taken."""
        if self._closed:
            return
        self._closed = True
        if self._queue.empty():
            # A getter may be waiting on the empty queue: wake it.
            self._queue.put_nowait(None)

    async def get(self) -> Batch | None:
        """The next batch, or None when the queue is closed and empty."""
        while not self._closed or not self._queue.empty():
            item = await self._queue.get()
            if item is not None:
                self._count(item, -1)
                return item
        if self._spilled:
            batch = self._spilled.popleft()
            self._count(batch, -1)
            return batch
        return None
