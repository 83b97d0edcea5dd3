"""A pure-Python asyncio storage client in the classic shape, for the demo.

Each write is an asyncio task of its own: it waits out a latency (a stand-in for a remote
store's round trip, jittered from 0.5x to 1.5x) and then appends its batch to
OUTPUT/python-store/records.ndjson; `close()` awaits the writes still pending with
`asyncio.gather`. Its checkpoint is the naive kind (THE WRONG WAY, on purpose): the end offset of
the last batch it was handed, saved at most every COMMIT_INTERVAL_S, so it commits what it
accepted rather than what it stored. After a SIGKILL a restart skips the writes that were
pending and writes again what was stored since the last save.

It also answers the calls shovel's runner makes on its storage (stats, flushed, close with a
deadline), so that the demo can run shovel's own stop sequence over this client too.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def read_committed(directory: Path) -> int:
    """The offset this client last saved in `directory` (0 if none)."""
    try:
        return int((directory / STORE_DIR / OFFSET_FILE).read_text())
    except FileNotFoundError:
        return 0


class PythonStore:
    """One task per write, a latency each, appended to a file when the latency is over."""

    def __init__(
        self,
        directory: Path,
        latency_s: float,
        seed: int,
        on_inflight: Callable[[int], None] | None = None,
    ) -> None:
        store = directory / STORE_DIR
        store.mkdir(parents=True, exist_ok=True)
        self._offset_path = store / OFFSET_FILE
        self._fd = os.open(
            store / RECORDS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
        )
        self._latency_s = latency_s
        self._rng = random.Random(seed)
        self._on_inflight = on_inflight
        self._observers: list[Callable[[float], None]] = []
        self._pending: set[asyncio.Task[None]] = set()
        self.committed_offset = read_committed(directory)
        self._accepted = self.committed_offset
        self._saved_at = time.monotonic()
        self._seq = 0
        self._inflight_bytes = 0
        self._inflight_records = 0
        self._records_durable = 0
        self._bytes_durable = 0

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

    async def write(self, batch: Batch) -> int:
        """Starts the write as a task of its own and returns at once (its number)."""
        self._seq += 1
        delay_s = self._latency_s * self._rng.uniform(*JITTER)
        task = asyncio.get_running_loop().create_task(
            self._store(batch, delay_s, time.monotonic()), name=f"python-store-write-{self._seq}"
        )
        self._pending.add(task)
        self._inflight_bytes += len(batch.data)
        self._inflight_records += batch.records
        task.add_done_callback(lambda t: self._finished(t, batch))
        self._report_inflight()
        self._accepted = batch.end_offset
        if time.monotonic() - self._saved_at >= COMMIT_INTERVAL_S:
            self._save(self._accepted)
        return self._seq

    async def _store(self, batch: Batch, delay_s: float, submitted_at: float) -> None:
        await asyncio.sleep(delay_s)
        # bytes() is the same object for bytes, and a copy of native Records (a file source).
        view = memoryview(bytes(batch.data))
        while view:
            view = view[os.write(self._fd, view) :]
        self._records_durable += batch.records
        self._bytes_durable += len(batch.data)
        took = time.monotonic() - submitted_at
        for observe in self._observers:
            observe(took)

    def _finished(self, task: asyncio.Task[None], batch: Batch) -> None:
        self._pending.discard(task)
        self._inflight_bytes -= len(batch.data)
        self._inflight_records -= batch.records
        self._report_inflight()

    def _report_inflight(self) -> None:
        if self._on_inflight is not None:
            self._on_inflight(len(self._pending))

    def _save(self, offset: int) -> None:
        tmp = self._offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self._offset_path)
        self.committed_offset = offset
        self._saved_at = time.monotonic()

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
            self._save(self._accepted)
            return PythonCloseReport(self.committed_offset)
        finally:
            # Writes still pending are abandoned, never left to write into a closed descriptor.
            for task in self._pending:
                task.cancel()
            os.close(self._fd)
