"""An asyncio front for the native storage client: the output directory, opened, written to,
and closed durably.

The native client never calls into Python. It signals progress (and errors) by making a file
descriptor readable; this module watches it with `loop.add_reader`, then reads the counters.
Writes are handed over without waiting for durability; callers that need to know wait with
`durable(seq)`. Cancelling any wait here abandons the wait, never the write.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from shovel._native import (
    FAULT_INJECTION,
    ClientClosedError,
    CloseReport,
    CloseTimeoutError,
    CorruptStoreError,
    DirectoryLockedError,
    Stats,
    StorageClient,
    StorageError,
    StorageIOError,
)
from shovel.batches import Batch
from shovel.storage.waiting import Progress

__all__ = [
    "FAULT_INJECTION",
    "ClientClosedError",
    "CloseReport",
    "CloseTimeoutError",
    "Closed",
    "CorruptStoreError",
    "DirectoryLockedError",
    "OpenStorage",
    "Stats",
    "Storage",
    "StorageConfig",
    "StorageError",
    "StorageIOError",
    "StorageStats",
    "Store",
    "WatchesFailure",
]

log = logging.getLogger(__name__)

# How long the interpreter-exit hook waits for each client that was never closed.
ATEXIT_CLOSE_TIMEOUT_S = 10.0

# Strong references on purpose: a client its owner forgot to close must live until the exit
# hook has flushed it (its Drop would only drain in the background, which exit cuts short).
_unclosed: set[StorageClient] = set()


# A forked child inherits the set but must not touch its parent's clients.
os.register_at_fork(after_in_child=_unclosed.clear)


@atexit.register
def _close_forgotten_clients() -> None:
    for client in list(_unclosed):
        warnings.warn(
            f"storage client for {client.directory} was not closed; closing it at exit",
            ResourceWarning,
            stacklevel=1,
        )
        try:
            client.close(ATEXIT_CLOSE_TIMEOUT_S)
        except StorageError as e:
            log.error("closing %s at exit failed: %s", client.directory, e)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """How to open the client."""

    directory: Path
    segment_max_bytes: int
    fsync_interval_ms: int
    fsync_max_bytes: int
    max_inflight_bytes: int


class StorageStats(Protocol):
    """The counters the service reads from its storage."""

    @property
    def inflight_writes(self) -> int: ...
    @property
    def inflight_bytes(self) -> int: ...
    @property
    def inflight_records(self) -> int: ...
    @property
    def records_durable(self) -> int: ...
    @property
    def bytes_durable(self) -> int: ...
    @property
    def committed_offset(self) -> int: ...
    @property
    def fsyncs(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def retries(self) -> int: ...


class Closed(Protocol):
    """What a close reports."""

    @property
    def committed_offset(self) -> int: ...


class Store(Protocol):
    """What the service needs of an output directory: `Storage`, or another client in its place
    (the demonstration's Python client, the classic benchmark's)."""

    @property
    def committed_offset(self) -> int: ...
    @property
    def initial_source(self) -> str: ...
    @property
    def initial_records(self) -> int: ...
    @property
    def recovery_notes(self) -> list[str]: ...
    def stats(self) -> StorageStats: ...
    def on_durable(self, observer: Callable[[float], None]) -> None: ...
    async def write(self, batch: Batch) -> int: ...
    async def flushed(self) -> None: ...
    async def close(self, timeout_s: float) -> Closed: ...


@runtime_checkable
class WatchesFailure(Protocol):
    """Storage that can fail with nothing handed to it (a remote store whose publishes fail
    for good): the storage task watches it, not to wait for its next write to find out."""

    async def failed(self) -> None:
        """Returns never; raises the storage error once one has ended the writes."""
        ...


# How the service opens its storage (Storage.open, unless a caller passes another).
OpenStorage = Callable[[StorageConfig], Awaitable[Store]]


class Storage:
    """An open output directory. Create with `await Storage.open(...)`; end with `close()`."""

    def __init__(self, client: StorageClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self._progress = Progress(loop)
        self._watching = True
        _unclosed.add(client)
        loop.add_reader(client.notify_fd(), self._on_progress)

    @classmethod
    async def open(cls, config: StorageConfig) -> Storage:
        """Locks and recovers the directory (blocking work, done off the event loop)."""
        client = await asyncio.to_thread(
            StorageClient,
            str(config.directory),
            segment_max_bytes=config.segment_max_bytes,
            fsync_interval_ms=config.fsync_interval_ms,
            fsync_max_bytes=config.fsync_max_bytes,
            max_inflight_bytes=config.max_inflight_bytes,
        )
        return cls(client, asyncio.get_running_loop())

    @property
    def committed_offset(self) -> int:
        """The committed source offset found at open: where the source resumes."""
        return self._client.initial_committed_offset

    @property
    def initial_source(self) -> str:
        """The source descriptor of the checkpoint found at open ("" if none): what the
        committed offset belongs to."""
        return self._client.initial_source

    @property
    def initial_records(self) -> int:
        """Records already stored when the directory was opened."""
        return self._client.initial_records

    @property
    def recovery_notes(self) -> list[str]:
        """What recovery repaired at open."""
        return self._client.recovery_notes

    def stats(self) -> Stats:
        """The native counters, now (safe from any thread)."""
        return self._client.stats()

    def on_durable(self, observer: Callable[[float], None]) -> None:
        """Calls `observer(seconds)` with each write's submit-to-durable time."""
        self._progress.on_durable(observer)

    def _on_progress(self) -> None:
        self._client.drain_notifications()
        for event in self._client.take_events():
            log.warning("storage: %s", event)
        self._progress.made(self._client.durable_seq)

    async def write(self, batch: Batch) -> int:
        """Hands `batch` to the client, waiting while it is full. Returns the write's sequence
        number. Raises the first storage error once one has happened."""
        return await self._progress.hand_over(
            lambda: self._client.submit(batch.data, batch.records, batch.end_offset, batch.source)
        )

    async def flushed(self) -> None:
        """Waits until every write handed over so far is durable."""
        await self.durable(self._progress.last_seq)

    async def durable(self, seq: int) -> None:
        """Waits until write `seq` is durable; raises the storage error that prevents it."""
        while self._client.durable_seq < seq:
            self._client.check()
            if self._client.closed:
                raise ClientClosedError(f"write {seq} was not made durable before close")
            await self._progress.next()

    async def close(self, timeout_s: float) -> CloseReport:
        """Drains, fsyncs, checkpoints and stops the client (in a thread; the loop stays free
        to serve). Raises CloseTimeoutError or the first storage error."""
        try:
            return await asyncio.to_thread(self._client.close, timeout_s)
        finally:
            if self._client.closed:
                # Otherwise (a bad timeout, say) the exit hook still has to flush it.
                _unclosed.discard(self._client)
            if self._watching:
                self._watching = False
                self._loop.remove_reader(self._client.notify_fd())
            self._on_progress()
