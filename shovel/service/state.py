"""What a run has done so far: the counts the metrics, the status lines and the summary read."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from shovel.service.laststop import StopReport
from shovel.service.metrics import LiveState
from shovel.service.pipeline import ReadTally
from shovel.service.queue import BatchQueue
from shovel.storage import Store
from shovel.storage.rejects import RejectWriter

# The service speaks as "shovel", as the runner does: these lines were its own.
log = logging.getLogger("shovel")


@dataclass(slots=True)
class RunState:
    """What the run has done, for metrics, status lines and the summary."""

    rejects: RejectWriter
    storage: Store
    tally: ReadTally = field(default_factory=ReadTally)
    queue: BatchQueue | None = None
    # When the stop began (time.monotonic()); None while running.
    stop_started: float | None = None
    # Why the run failed (the first reason found), None while it has not.
    fatal: str | None = None
    close_timed_out: bool = False
    started_at: float = field(default_factory=time.time)
    # The marker this run wrote into last-stop.json at start (None if it could not).
    marker: StopReport | None = None

    def live(self) -> LiveState:
        """The counters now (read by scrapes, on the metrics server's threads)."""
        st = self.storage.stats()
        q = self.queue
        return LiveState(
            records_read=self.tally.records,
            bytes_read=self.tally.bytes,
            queue_records=q.records if q is not None else 0,
            queue_batches=q.batches if q is not None else 0,
            inflight_writes=st.inflight_writes,
            inflight_bytes=st.inflight_bytes,
            inflight_records=st.inflight_records,
            records_stored=st.records_durable,
            bytes_stored=st.bytes_durable,
            committed_offset=st.committed_offset,
            fsyncs=st.fsyncs,
            storage_errors=st.errors,
            storage_retries=st.retries,
            records_rejected=self.rejects.records,
        )

    def fail(self, why: str) -> None:
        """Records why the run failed, unless an earlier reason was found."""
        self.fatal = self.fatal or why


def log_status(state: RunState) -> None:
    """One status line: what was read, stored, queued and in flight."""
    s = state.live()
    log.info(
        "status: read %d records, stored %d, queued %d, in flight %d (%d bytes), "
        "committed offset %d",
        s.records_read,
        s.records_stored,
        s.queue_records,
        s.inflight_records,
        s.inflight_bytes,
        s.committed_offset,
    )


class StatusLines:
    """A status line every `every_s` seconds until cancelled: a self-rescheduling callback
    rather than a task, so there is nothing to cancel in the TaskGroup."""

    def __init__(self, state: RunState, every_s: float) -> None:
        self._state = state
        self._every_s = every_s
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(every_s, self._tick)

    def _tick(self) -> None:
        log_status(self._state)
        self._handle = self._loop.call_later(self._every_s, self._tick)

    def cancel(self) -> None:
        """No more status lines."""
        self._handle.cancel()
