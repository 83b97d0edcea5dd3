"""A pure-Python asyncio storage client in the classic shape, for the demo.

Each write is an asyncio task of its own: it waits out a latency (a stand-in for a remote
store's round trip, jittered from 0.5x to 1.5x) and then appends its batch to
OUTPUT/python-store/records.ndjson; `close()` awaits the writes still pending with
`asyncio.gather`. Its checkpoint is the naive kind (THE WRONG WAY, on purpose): the end offset of
the last batch it was handed, saved at most every COMMIT_INTERVAL_S, so it commits what it
accepted rather than what it stored. After a SIGKILL a restart skips the writes that were
pending and writes again what was stored since the last save.

It also answers the calls shovel's runner makes on its storage (stats, flushed, close with a
deadline), so that the demo can run shovel's own stop sequence over this client too. The shape
(TaskPerWrite) and the checkpoint (NaiveCheckpoint) are also the classic remote client's
(pyremote.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shovel.batches import Batch
from shovel.storage import CloseTimeoutError

STORE_DIR = "python-store"
RECORDS_FILE = "records.ndjson"
OFFSET_FILE = "offset"
COMMIT_INTERVAL_S = 0.1
JITTER = (0.5, 1.5)


@dataclass(frozen=True, slots=True)
class PythonStats:
    """The counters shovel's runner reads from its storage (fsyncs, errors and retries do not
    apply: this client neither syncs nor retries)."""

    inflight_writes: int
    inflight_bytes: int
    inflight_records: int
    records_durable: int
    bytes_durable: int
    committed_offset: int
    fsyncs: int = 0
    errors: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True)
class PythonCloseReport:
    """What close() reports to shovel's runner."""

    committed_offset: int


def read_committed(directory: Path, store_dir: str = STORE_DIR) -> int:
    """The offset a client last saved in `directory` (0 if none); `store_dir`: the client's."""
    try:
        return int((directory / store_dir / OFFSET_FILE).read_text())
    except FileNotFoundError:
        return 0


class NaiveCheckpoint:
    """THE WRONG WAY, on purpose: the end offset of the last batch a client was handed, saved
    at most every COMMIT_INTERVAL_S (and at a clean close), so that it commits what the client
    accepted rather than what it stored. In DIRECTORY/STORE_DIR/offset."""

    def __init__(self, directory: Path, store_dir: str) -> None:
        (directory / store_dir).mkdir(parents=True, exist_ok=True)
        self._path = directory / store_dir / OFFSET_FILE
        self.committed_offset = read_committed(directory, store_dir)
        self._accepted = self.committed_offset
        self._saved_at = time.monotonic()

    def accepted(self, end_offset: int) -> None:
        """The client was handed records up to `end_offset`: saved when the interval is up."""
        self._accepted = end_offset
        if time.monotonic() - self._saved_at >= COMMIT_INTERVAL_S:
            self.save()

    def save(self) -> None:
        """Saves the offset of the last batch handed over."""
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(str(self._accepted))
        tmp.replace(self._path)
        self.committed_offset = self._accepted
        self._saved_at = time.monotonic()


class TaskPerWrite:
    """The classic shape of both of the demo's pure-Python clients (THE WRONG WAY, on purpose):
    each write is an asyncio task of its own, started by `write()`, which returns at once;
    `close()` awaits the tasks still pending with `asyncio.gather`; the checkpoint is a
    NaiveCheckpoint. A subclass starts its tasks with `_start` and says with `_stored` what
    each stored; `_release` frees what it holds (a file, a connection) at the close.

    It also answers the calls shovel's runner makes on its storage (stats, flushed, close with
    a deadline), so that the demo can run shovel's own stop sequence over it too."""

    def __init__(
        self, directory: Path, store_dir: str, on_inflight: Callable[[int], None] | None
    ) -> None:
        self._checkpoint = NaiveCheckpoint(directory, store_dir)
        self._on_inflight = on_inflight
        self._observers: list[Callable[[float], None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._inflight_bytes = 0
        self._inflight_records = 0
        self._records_durable = 0
        self._bytes_durable = 0

    @property
    def committed_offset(self) -> int:
        """Where the source resumes: the checkpoint's offset (see NaiveCheckpoint)."""
        return self._checkpoint.committed_offset

    @property
    def initial_source(self) -> str:
        """What shovel's runner checks the source against: this client keeps no descriptor."""
        return ""

    @property
    def initial_records(self) -> int:
        """Records stored before this run (not counted by this client)."""
        return 0

    @property
    def recovery_notes(self) -> list[str]:
        """What opening repaired: this client repairs nothing."""
        return []

    def on_durable(self, observer: Callable[[float], None]) -> None:
        """Calls `observer(seconds)` with each write's submit-to-stored time."""
        self._observers.append(observer)

    def _start(self, store: Coroutine[Any, Any, None], records: int, nbytes: int) -> None:
        """Runs `store` (a write of `records` records, `nbytes` bytes) as a task of its own."""
        self._seq += 1
        task = asyncio.get_running_loop().create_task(
            store, name=f"{type(self).__name__}-write-{self._seq}"
        )
        self._pending.add(task)
        self._inflight_bytes += nbytes
        self._inflight_records += records
        task.add_done_callback(lambda t: self._finished(t, records, nbytes))
        self._report_inflight()

    def _stored(self, records: int, nbytes: int, submitted_at: float) -> None:
        """A write stored `records` records (`nbytes` bytes) handed over at `submitted_at`."""
        self._records_durable += records
        self._bytes_durable += nbytes
        took = time.monotonic() - submitted_at
        for observe in self._observers:
            observe(took)

    def _finished(self, task: asyncio.Task[None], records: int, nbytes: int) -> None:
        self._pending.discard(task)
        self._inflight_bytes -= nbytes
        self._inflight_records -= records
        self._report_inflight()

    def _report_inflight(self) -> None:
        if self._on_inflight is not None:
            self._on_inflight(len(self._pending))

    def stats(self) -> PythonStats:
        """The counters, now."""
        return PythonStats(
            inflight_writes=len(self._pending),
            inflight_bytes=self._inflight_bytes,
            inflight_records=self._inflight_records,
            records_durable=self._records_durable,
            bytes_durable=self._bytes_durable,
            committed_offset=self.committed_offset,
        )

    async def flushed(self) -> None:
        """Waits until every write started so far has finished."""
        await asyncio.gather(*self._pending)

    async def close(self, timeout_s: float | None = None) -> PythonCloseReport:
        """Awaits the pending writes (all of them, or until `timeout_s`), then saves the
        offset of the last batch handed over. A cancelled write makes the gather, and so
        close(), raise CancelledError."""
        try:
            try:
                await asyncio.wait_for(asyncio.gather(*self._pending), timeout_s)
            except TimeoutError:
                raise CloseTimeoutError(
                    f"close timed out: {len(self._pending)} writes "
                    f"({self._inflight_records} records) still pending"
                ) from None
            self._checkpoint.save()
            return PythonCloseReport(self.committed_offset)
        finally:
            # Writes still pending are abandoned, never left to write into what is released.
            for task in self._pending:
                task.cancel()
            await self._release()

    async def _release(self) -> None:
        """Frees what the client holds (the close's last step)."""


class PythonStore(TaskPerWrite):
    """One task per write, a latency each, appended to a file when the latency is over."""

    def __init__(
        self,
        directory: Path,
        latency_s: float,
        seed: int,
        on_inflight: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(directory, STORE_DIR, on_inflight)
        self._fd = os.open(
            directory / STORE_DIR / RECORDS_FILE,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o644,
        )
        self._latency_s = latency_s
        self._rng = random.Random(seed)

    async def write(self, batch: Batch) -> int:
        """Starts the write as a task of its own and returns at once (its number)."""
        delay_s = self._latency_s * self._rng.uniform(*JITTER)
        self._start(self._store(batch, delay_s, time.monotonic()), batch.records, len(batch.data))
        self._checkpoint.accepted(batch.end_offset)
        return self._seq

    async def _store(self, batch: Batch, delay_s: float, submitted_at: float) -> None:
        await asyncio.sleep(delay_s)
        # bytes() is the same object for bytes, and a copy of native Records (a file source).
        view = memoryview(bytes(batch.data))
        while view:
            view = view[os.write(self._fd, view) :]
        self._stored(batch.records, len(batch.data), submitted_at)

    async def _release(self) -> None:
        os.close(self._fd)
