"""The NATS JetStream source: a durable pull consumer, acknowledged only once stored durably.

The work is done by the native source (`_native.NatsSource`, native/src/nats/) on a runtime
thread of its own; this module keeps the lifecycle every source has (sources/api.py) and turns
the native object's answers into the service's: its errors into SourceError/SourceMismatch/
SourceUnavailable, its log lines into this module's logger, its stop report into two lines.

Its steps (the runner drives them):
  resume()       checks the checkpoint's stream and consumer against the ones given, then
                 restores what the checkpoint lists as stored and not confirmed acknowledged
                 (and what the last stop recorded beside it).
  open()         connects, checks the stream against the checkpoint, binds the durable pull
                 consumer (creating it when missing, with explicit acknowledgements), waiting
                 for the servers (at most --nats-connect-timeout-s when given).
  pieces()       batches of record lines, as the native reader cuts them.
  acknowledge()  tells the native source what storage made durable: it acknowledges those
                 messages and waits for the server to confirm each acknowledgement.
  stop_tail()    the messages that arrived but were not handed over yet: stored too.
  finish()       after storage is closed (everything drained is fsynced): acknowledges what
                 is durable, gives back (negative acknowledgement) what is not, so that
                 another replica takes it at once, closes the connection, all within the
                 deadline; with no server connected it sends nothing (see docs/nats.md for the
                 duplicates across replicas that this and two other cases allow). Then it
                 records beside the checkpoint which stored messages are still not confirmed:
                 the next start counts those, not what the last checkpoint, written before the
                 last acknowledgements, lists.
  collectors()   the shovel_nats_* metrics (nats/metrics.py).

Stored record, one line per message (JSON, ASCII only):
  {"seq":STREAM_SEQUENCE,"subject":"SUBJECT","id":"NATS-MSG-ID","data":"BASE64"}
`id` is present only when the message has a Nats-Msg-Id header; `data` is the payload in
standard base64, so any bytes (newlines included) are stored unambiguously. Other headers are
not kept. The committed offset is the highest stream sequence stored here.

Sizing: one replica holds at most `batch * (queue_max_batches + 4)` messages fetched and not
yet confirmed acknowledged; a reader that waits for room for STALL_WARN_S says so with the
cause, and the metrics show the wait. A consumer shovel creates gets `max_ack_pending` of 16
times that (room for 16 replicas at full pace) and `ack_wait` of the shutdown timeout plus
10 s, at least 30 s: a message held by a replica that is stopping is acknowledged before the
server would give it to another one. A replica killed outright (SIGKILL, a lost node) leaves
its unacknowledged messages to be redelivered after `ack_wait`: to another replica, which
stores them (a message the killed one had already made durable is then stored twice, in two
output directories: the `seq` says so), or to its own restart, which acknowledges them without
storing them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from prometheus_client.registry import Collector

from shovel import _native
from shovel._threads import off_loop
from shovel.batches import Batch, Piece
from shovel.sources.api import (
    Source,
    SourceError,
    SourceMismatch,
    SourceUnavailable,
    stored_origin,
)
from shovel.sources.identity import NatsOrigin, kind_of
from shovel.sources.nats.metrics import NatsCollector

if TYPE_CHECKING:
    # Only its type: url.py imports this module when it opens the source.
    from shovel.sources.nats.url import NatsSpec

log = logging.getLogger(__name__)

# Room for this many replicas at full pace in a created consumer's max_ack_pending.
REPLICAS_ROOM = 16
# The acknowledging task tells the native source what is durable at least this often.
ACK_TELL_S = 1.0
# How long close() (a run that never started) gives the connection to close.
CLOSE_S = 2.0
# A reader that has waited this long for room (to pull, or to hand over what it fetched) says
# so, with the cause.
STALL_WARN_S = _native.NATS_STALL_WARN_S


def _raise_mapped(e: _native.NatsError) -> NoReturn:
    """The native source's error as the service's, with its text."""
    if isinstance(e, _native.NatsMismatch):
        raise SourceMismatch(str(e)) from e
    if isinstance(e, _native.NatsUnavailable):
        raise SourceUnavailable(str(e)) from e
    raise SourceError(str(e)) from e


class NatsSource(Source):
    """See the module docstring."""

    replayable = True
    offset_unit = "batch"

    def __init__(
        self,
        spec: NatsSpec,
        queue_max_batches: int,
        shutdown_timeout_s: float,
        output_dir: Path | None = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.description = spec.describe()
        self.max_batch_records = spec.batch
        self.max_unacked = spec.batch * (queue_max_batches + 4)
        self.ack_wait_s = spec.ack_wait_s or max(30.0, shutdown_timeout_s + 10.0)
        self.max_ack_pending = spec.max_ack_pending or self.max_unacked * REPLICAS_ROOM
        self.shutdown_timeout_s = shutdown_timeout_s
        try:
            # Cheap: no thread and no I/O until open().
            self._native = _native.NatsSource(
                servers=list(spec.servers),
                stream=spec.stream,
                consumer=spec.consumer,
                subject=spec.subject,
                batch=spec.batch,
                ack_wait_s=self.ack_wait_s,
                max_ack_pending=self.max_ack_pending,
                max_unacked=self.max_unacked,
                shutdown_timeout_s=shutdown_timeout_s,
                output_dir=output_dir,
                creds=spec.creds,
                tls_ca=spec.tls_ca,
                tls_cert=spec.tls_cert,
                tls_key=spec.tls_key,
                connect_timeout_s=connect_timeout_s,
            )
        except ValueError as e:
            raise SourceError(f"{self.description}: {e}") from e
        # Set when the native source has news (see _on_news); waited for by open and pieces.
        self._news = asyncio.Event()
        self._durable_progress = asyncio.Event()
        # The loop watching notify_fd() (None: not watched).
        self._watched_by: asyncio.AbstractEventLoop | None = None

    # --- start -------------------------------------------------------------------------

    def resume(self, committed_offset: int, descriptor: str) -> str:
        origin = stored_origin(descriptor, NatsOrigin, self.description)
        try:
            if origin is None:
                self._native.restore(committed_offset)
            else:
                if (origin.stream, origin.consumer) != (self.spec.stream, self.spec.consumer):
                    raise SourceMismatch(
                        f"this output directory holds records from {kind_of(origin)}, not from "
                        f"stream {self.spec.stream} consumer {self.spec.consumer}; the two must "
                        "not be mixed (use a new --output-dir)"
                    )
                _, _, warning = self._native.restore(
                    committed_offset,
                    stored=origin.stored,
                    acked=origin.acked,
                    created=origin.created,
                    consumer_created=origin.consumer_created,
                )
                if warning is not None:
                    log.warning("%s", warning)
        except _native.NatsError as e:
            _raise_mapped(e)
        return f"consuming after stream sequence {committed_offset}"

    async def open(self) -> str:
        """Connects and binds the consumer, waiting while no server answers (at most the
        connect timeout); raises SourceError (a missing stream, an unusable consumer),
        SourceMismatch when the stream is not the one the checkpoint was written from, or
        SourceUnavailable when no server answered in time."""
        self._watch()
        try:
            self._native.start_open()
        except OSError as e:
            raise SourceError(f"cannot start the NATS client: {e}") from e
        while True:
            self._news.clear()
            try:
                phrase = self._native.open_result()
            except _native.NatsError as e:
                _raise_mapped(e)
            if phrase is not None:
                return phrase
            await self._news.wait()

    def _watch(self) -> None:
        if self._watched_by is None:
            self._watched_by = asyncio.get_running_loop()
            self._watched_by.add_reader(self._native.notify_fd(), self._on_news)

    def _unwatch(self) -> None:
        """No more wake-ups; the log lines said until now are logged."""
        if self._watched_by is not None:
            self._watched_by.remove_reader(self._native.notify_fd())
            self._watched_by = None
        self._on_news()

    def _on_news(self) -> None:
        self._native.drain_notifications()
        for level, text in self._native.take_events():
            log.log(level, "%s", text)
        self._news.set()

    # --- reading ---------------------------------------------------------------------------

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        self._watch()
        self._native.start_reading(start_offset)
        while True:
            self._news.clear()
            try:
                batch = self._native.take_batch()
            except _native.NatsError as e:
                _raise_mapped(e)
            if batch is None:
                await self._news.wait()
                continue
            yield Batch(*batch)

    def stop_tail(self) -> list[Piece]:
        return [Batch(*batch) for batch in self._native.take_tail()]

    # --- acknowledging ----------------------------------------------------------------------

    def collectors(self) -> list[Collector]:
        return [NatsCollector(self._native.stats)]

    def durable_progress(self) -> None:
        """Storage made progress: wakes the acknowledging task."""
        self._durable_progress.set()

    async def acknowledge(self, records_durable: Callable[[], int]) -> None:
        """Tells the native source what storage made durable, until cancelled."""
        while True:
            self._durable_progress.clear()
            self._native.made_durable(records_durable())
            # Not asyncio.wait_for: on 3.11 it swallows a cancellation that comes as the event
            # is set (at every stop, just after the queue drain), and the stop would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_TELL_S):
                    await self._durable_progress.wait()

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        """After storage was closed: acknowledges what is durable, gives back what is not,
        and closes the connection, all within `timeout_s`. With no server connected nothing
        is sent: the server redelivers it all after ack_wait (a restart here acknowledges what
        is stored without storing it again)."""
        try:
            report = await off_loop(self._native.finish, records_durable, timeout_s)
        finally:
            self._unwatch()
        if report is None:
            return
        if report.stop_record_error is not None:
            log.warning(
                "NATS: %s (the next start counts the stored messages awaiting acknowledgement "
                "from the checkpoint alone)",
                report.stop_record_error,
            )
        left_to_ack_wait = report.due_back - report.given_back
        if not report.connected:
            log.warning(
                "NATS: no server connected at the stop: %d stored messages stay "
                "unacknowledged and %d not stored are not given back; the server delivers "
                "them again after ack_wait (a restart here acknowledges the stored ones)",
                report.not_confirmed,
                left_to_ack_wait,
            )
            return
        log.log(
            logging.WARNING if left_to_ack_wait > 0 else logging.INFO,
            "NATS: %d messages acknowledged, %d stored messages await acknowledgement (not "
            "confirmed), %d given back for redelivery, %d left to ack_wait; connection closed "
            "in %.3fs",
            report.acked,
            report.not_confirmed,
            report.given_back,
            left_to_ack_wait,
            report.took_s,
        )

    async def close(self) -> None:
        """Closes the connection without acknowledging anything (a run that never started)."""
        try:
            await off_loop(self._native.close, CLOSE_S)
        finally:
            self._unwatch()
