"""The NATS JetStream source: a durable pull consumer, acknowledged only once stored durably.

Its steps (the lifecycle of every source, sources/api.py; the runner drives it):
  open()         connects, checks the stream against the checkpoint, binds the durable pull
                 consumer (creating it when missing, with explicit acknowledgements).
  pieces()       the reader task: pull requests on an inbox of our own, one batch per arrival.
  acknowledge()  a task beside reader and storage: once storage says a batch is durable (its
                 checkpoint on disk), acknowledges its messages and waits for the server to
                 confirm each acknowledgement (the ledger, nats/ledger.py).
  stop_tail()    the messages that arrived but were not handed over yet: stored too.
  finish()       after storage is closed (everything drained is fsynced): acknowledges what
                 is durable, gives back (negative acknowledgement) what is not, so that
                 another replica takes it at once, then flushes and closes the connection,
                 all within the deadline; with no server connected it sends nothing (see
                 docs/nats.md for the duplicates across replicas that this and two other cases
                 allow). Then it records beside the checkpoint which stored messages are still
                 not confirmed (ledger.StopRecord): the next start counts those, not what the
                 last checkpoint, written before the last acknowledgements, lists.
  collectors()   the shovel_nats_* metrics (nats/metrics.py).

Stored record, one line per message (JSON, ASCII only):
  {"seq":STREAM_SEQUENCE,"subject":"SUBJECT","id":"NATS-MSG-ID","data":"BASE64"}
`id` is present only when the message has a Nats-Msg-Id header; `data` is the payload in
standard base64, so any bytes (newlines included) are stored unambiguously. Other headers are
not kept. The committed offset is the highest stream sequence stored here.

Sizing: one replica holds at most `batch * (queue_max_batches + 4)` messages fetched and not
yet confirmed acknowledged, a bound of its own (nats/ledger.py says why nothing another client
holds may enter it); a reader that waits for room for STALL_WARN_S says so with the cause, and
the metrics show the wait. A consumer shovel creates gets `max_ack_pending` of 16 times that
(room for 16 replicas at full pace) and `ack_wait` of the shutdown timeout plus 10 s, at least
30 s: a message held by a replica that is stopping is acknowledged before the server would
give it to another one. A replica killed outright (SIGKILL, a lost node) leaves its
unacknowledged messages to be redelivered after `ack_wait`: to another replica, which stores
them (a message the killed one had already made durable is then stored twice, in two output
directories: the `seq` says so), or to its own restart, which acknowledges them without
storing them again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from prometheus_client.registry import Collector

from shovel._threads import off_loop
from shovel.batches import Batch, Piece
from shovel.sources.api import Source, SourceError, SourceMismatch, stored_origin
from shovel.sources.identity import DescriptorError, NatsOrigin, encode, kind_of
from shovel.sources.nats.ledger import (
    STOP_RECORD_FILE,
    Entry,
    Ledger,
    Listing,
    StopRecord,
    decode_ranges,
    encode_ranges,
    read_stop_record,
    write_stop_record,
)
from shovel.sources.nats.metrics import AckProgress, AckProgressCollector, ack_latency_histogram

if TYPE_CHECKING:
    # Only its type: url.py imports this module when it opens the source.
    from shovel.sources.nats.url import NatsSpec

log = logging.getLogger(__name__)

# Room for this many replicas at full pace in a created consumer's max_ack_pending.
REPLICAS_ROOM = 16
# A pull request waits this long on the server for messages; a new one follows.
PULL_EXPIRES_S = 2.0
# A pull request that has had no answer for this long past its expiry is taken as lost (a
# reconnect, a server that went away).
PULL_LOST_S = 1.0
# An acknowledgement not confirmed within this long is sent again.
ACK_RESEND_S = 2.0
# How long to wait before looking the stream and the consumer up again when the servers did
# not answer.
LOOKUP_RETRY_S = 1.0
# How often the consumer's state is asked for (pending messages, acknowledgement floor); and
# how often while the reader waits for the floor to shorten the checkpoint's listing.
CONSUMER_INFO_S = 1.0
LISTING_FULL_LOOK_S = 0.5
# The ledger's listing in the checkpoint's source descriptor: at most this long, so that a
# checkpoint, written at every commit, stays small (the native limit is far higher).
LISTING_MAX_CHARS = 3000
# How long finish() waits for the last acknowledgements to be confirmed.
CONFIRM_WAIT_S = 2.0
# At a stop, the share of the remaining time given to receiving what the last pull request
# still brings (to give it back): the acknowledgements went out before.
INBOX_DRAIN_SHARE = 0.25
# A flush or a close that the deadline has already passed still gets this long.
LAST_WORD_S = 0.1
# How long close() (a run that never started) gives the connection to close.
CLOSE_S = 2.0
# The consumer is said missing after this many looks in a row found it so (one could be an
# answer from a server catching up after a restart).
MISSING_WARN_AFTER = 3
# After the server turned a pull request down (409: too many waiting requests, the
# max_ack_pending limit reached, a leader change), the next one waits this long.
PULL_REFUSED_PAUSE_S = 0.5
# A reader that has waited this long for room (to pull, or to hand over what it fetched) says
# so, with the cause.
STALL_WARN_S = 5.0
# The entries restored from the checkpoint and not delivered again leave the ledger once the
# consumer's ack_wait has passed since it was bound (the server then delivers again any of them
# it does not hold acknowledged), and this much more: it delivers such a message in answer to
# the next pull request of any replica, and this one's are at most PULL_EXPIRES_S +
# PULL_LOST_S apart.
RESTORED_MARGIN_S = PULL_EXPIRES_S + PULL_LOST_S + CONSUMER_INFO_S
# How long a stop may take to write its record beside the checkpoint (ledger.StopRecord).
STOP_RECORD_S = 1.0


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two timeouts (None: none)."""
    return b if a is None else a if b is None else min(a, b)


class _NotNow(SourceError):
    """The servers did not answer a question now (no leader yet, a server going away)."""


def record_of(seq: int, msg: Msg) -> bytes:
    """The stored line for a message (see the module docstring)."""
    body: dict[str, object] = {"seq": seq, "subject": msg.subject}
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    if msg_id:
        body["id"] = msg_id
    body["data"] = base64.b64encode(msg.data).decode("ascii")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def _created(info_created: object) -> str:
    """The stream's creation time, to the microsecond, as the checkpoint keeps it."""
    if isinstance(info_created, datetime.datetime):
        return info_created.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(info_created)


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (`*` one token, `>` one or more at the end)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)


class NatsSource(Source):
    """See the module docstring."""

    replayable = True

    def __init__(
        self,
        spec: NatsSpec,
        queue_max_batches: int,
        shutdown_timeout_s: float,
        output_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.description = spec.describe()
        self.max_unacked = spec.batch * (queue_max_batches + 4)
        self.ack_wait_s = spec.ack_wait_s or max(30.0, shutdown_timeout_s + 10.0)
        self.max_ack_pending = spec.max_ack_pending or self.max_unacked * REPLICAS_ROOM
        self.shutdown_timeout_s = shutdown_timeout_s
        self._ack_latency = ack_latency_histogram()
        self.progress = AckProgress(ack_latency=self._ack_latency.observe)
        # Where a stop records which listed messages it saw confirmed (None: nowhere).
        self._output_dir = output_dir
        self._restored: NatsOrigin | None = None
        self._ledger = Ledger(())
        # Whether the restored entries' states come from the last stop's record, not from the
        # checkpoint alone.
        self._restored_from_stop = False
        # When the restored entries not delivered again leave the ledger (loop time; never
        # before the consumer is bound).
        self._restored_until = math.inf
        # The reader has said that it waits for room (see _stall).
        self._stall_said = False
        self._created = ""
        self._consumer_created = ""
        self._nc: Client | None = None
        self._fetch_sub: Subscription | None = None
        self._inbox = ""
        self._ack_inbox = ""
        self._pull_subject = ""
        # Messages delivered to our inbox and not yet looked at, with their arrival time.
        self._arrived: deque[tuple[Msg, float]] = deque()
        self._wake = asyncio.Event()
        # Taken from `_arrived`, new here, and not yet handed over: (seq, msg, fetched_at).
        self._held: list[tuple[int, Msg, float]] = []
        self._held_seqs: set[int] = set()
        self._durable_progress = asyncio.Event()
        self._room = asyncio.Event()
        self._offset = 0
        self._closing = False
        # The reader waits for the checkpoint's listing to shrink.
        self._listing_full = False
        # At a stop: the sequences whose acknowledgement's confirmation finish() waits for,
        # and the event set when the last of them is confirmed.
        self._confirming: set[int] = set()
        self._all_confirmed = asyncio.Event()
        # How many looks in a row found the consumer missing.
        self._consumer_missing = 0

    # --- start -------------------------------------------------------------------------

    def resume(self, committed_offset: int, descriptor: str) -> str:
        origin = stored_origin(descriptor, NatsOrigin, self.description)
        if origin is not None:
            if (origin.stream, origin.consumer) != (self.spec.stream, self.spec.consumer):
                raise SourceMismatch(
                    f"this output directory holds records from {kind_of(origin)}, not from "
                    f"stream {self.spec.stream} consumer {self.spec.consumer}; the two must not be "
                    "mixed (use a new --output-dir)"
                )
            on_disk = Listing(origin.stored, origin.acked)
            try:
                unconfirmed, confirmed = decode_ranges(origin.stored), decode_ranges(origin.acked)
            except DescriptorError as e:
                raise SourceMismatch(f"the checkpoint's list of stored messages: {e}") from e
            record = self._stop_record(on_disk)
            if record is not None:
                # What the last stop saw confirmed after its last checkpoint.
                still = set(decode_ranges(record.not_confirmed))
                listed = [*unconfirmed, *confirmed]
                unconfirmed = [seq for seq in listed if seq in still]
                confirmed = [seq for seq in listed if seq not in still]
                self._restored_from_stop = True
            self._ledger = Ledger(unconfirmed, confirmed, self.max_unacked, on_disk)
        self._restored = origin
        self._offset = committed_offset
        return f"consuming after stream sequence {committed_offset}"

    def _stop_record(self, on_disk: Listing) -> StopRecord | None:
        """The last stop's record, if it was written about the checkpoint on disk."""
        if self._output_dir is None:
            return None
        try:
            record = read_stop_record(self._output_dir)
        except (DescriptorError, OSError) as e:
            log.warning(
                "ignoring %s: %s (the stored messages the checkpoint lists as not confirmed "
                "are counted as such)",
                self._output_dir / STOP_RECORD_FILE,
                e,
            )
            return None
        return record if record is not None and record.listing == on_disk else None

    async def open(self) -> str:
        """Connects and binds the consumer, waiting while no server answers; raises
        SourceError (a missing stream, an unusable consumer), or SourceMismatch when the
        stream is not the one the checkpoint was written from."""
        spec = self.spec
        try:
            nc = await nats.connect(
                servers=list(spec.servers),
                name="shovel",
                user_credentials=str(spec.creds) if spec.creds else None,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=5,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as e:
            # The client's own errors, and a credentials file it cannot use: said, not a crash.
            raise SourceError(f"cannot connect to {self.description}: {e!r}") from e
        self._nc = nc
        js = nc.jetstream()
        while True:
            try:
                info = await self._look_up(js)
                break
            except _NotNow as e:
                # A cluster electing its leaders, a server going away: wait, as for a server.
                log.warning("NATS: %s; trying again in %gs", e, LOOKUP_RETRY_S)
                await asyncio.sleep(LOOKUP_RETRY_S)
        self._inbox = nc.new_inbox()
        self._ack_inbox = nc.new_inbox()
        self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.consumer}"
        self._fetch_sub = await nc.subscribe(self._inbox, cb=self._on_delivery)
        await nc.subscribe(self._ack_inbox + ".*", cb=self._on_ack_confirmed)
        self.progress.consumer_pending = info.num_pending or 0
        self.progress.consumer_ack_pending = info.num_ack_pending or 0
        if info.ack_floor is not None:
            self._ledger.below_floor(info.ack_floor.stream_seq)
        # The longest a message may wait for its next delivery (a backoff overrides ack_wait).
        redelivery_s = max([info.config.ack_wait or 30.0, *(info.config.backoff or [])])
        self._restored_until = asyncio.get_running_loop().time() + redelivery_s + RESTORED_MARGIN_S
        restored = self._ledger.restored()
        return (
            f"consumer {spec.consumer}: ack_wait {info.config.ack_wait or 0:g}s, "
            f"max_ack_pending {info.config.max_ack_pending}, {info.num_pending or 0} messages "
            "pending"
        ) + (f"; {self._restored_phrase(restored)}" if restored else "")

    def _restored_phrase(self, restored: int) -> str:
        if self._restored_from_stop:
            return (
                f"{restored} stored messages await acknowledgement (not confirmed at the last stop)"
            )
        return (
            f"{restored} stored messages may await acknowledgement (not confirmed when the last "
            "checkpoint was written, and no stop recorded their acknowledgement since)"
        )

    async def _look_up(self, js: JetStreamContext) -> ConsumerInfo:
        """The stream, checked against the checkpoint, and the consumer (created if missing).
        Raises _NotNow when the servers do not answer."""
        spec = self.spec
        try:
            stream = await js.stream_info(spec.stream)
        except nats.js.errors.NotFoundError:
            raise SourceError(f"stream {spec.stream} does not exist on {spec.servers[0]}") from None
        except (nats.errors.Error, TimeoutError) as e:
            raise _NotNow(f"cannot look up stream {spec.stream}: {e!r}") from e
        self._created = _created(stream.created)
        subjects = stream.config.subjects or []
        if (
            spec.subject
            and subjects
            and not any(subjects_overlap(spec.subject, s) for s in subjects)
        ):
            raise SourceError(
                f"subject filter {spec.subject} matches none of stream {spec.stream}'s subjects "
                f"({', '.join(subjects)}): nothing would ever be delivered"
            )
        restored = self._restored
        if restored is not None and restored.created and restored.created != self._created:
            raise SourceMismatch(
                f"stream {spec.stream} was created at {self._created}, but this output directory "
                f"holds records of a stream of that name created at {restored.created}: it was "
                "deleted and made again, its sequences start over (use a new --output-dir)"
            )
        return await self._consumer(js)

    async def _consumer(self, js: JetStreamContext) -> ConsumerInfo:
        spec = self.spec
        info = await self._consumer_info(js)
        restored = self._restored
        if info is None and restored is not None:
            raise SourceMismatch(
                f"consumer {spec.consumer} no longer exists on stream {spec.stream}, but this "
                "output directory holds records read through it: one made again would deliver "
                "the stream from its first message, and they would be stored twice (use a new "
                "--output-dir)"
            )
        if info is None:
            info = await self._create_consumer(js)
        created = _created(info.created)
        if restored is not None and restored.consumer_created not in ("", created):
            raise SourceMismatch(
                f"consumer {spec.consumer} was created at {created}, but this output directory "
                f"holds records read through a consumer of that name created at "
                f"{restored.consumer_created}: it was deleted and made again, and delivers the "
                "stream from its first message (use a new --output-dir)"
            )
        self._consumer_created = created
        config = info.config
        if config.deliver_subject:
            raise SourceError(
                f"consumer {spec.consumer} is a push consumer; shovel needs a pull consumer"
            )
        if config.ack_policy != AckPolicy.EXPLICIT:
            raise SourceError(
                f"consumer {spec.consumer} acknowledges with policy {config.ack_policy}; shovel "
                "needs explicit acknowledgements (each message once it is durable)"
            )
        filters = [config.filter_subject] if config.filter_subject else []
        if spec.subject is not None and filters != [spec.subject]:
            raise SourceError(
                f"consumer {spec.consumer} filters {filters or 'no subject'}, not "
                f"{spec.subject}: drop subject= or use another consumer name"
            )
        if config.max_deliver not in (None, 0, -1):
            raise SourceError(
                f"consumer {spec.consumer} has max_deliver {config.max_deliver}: a message "
                "delivered that many times (each stop gives back what is in flight, each crash "
                "leaves it to be redelivered) would never be delivered again, nor stored; "
                "shovel needs max_deliver -1 (no limit)"
            )
        if config.inactive_threshold:
            raise SourceError(
                f"consumer {spec.consumer} has inactive_threshold "
                f"{config.inactive_threshold:g}s: the server deletes it when no replica pulls "
                "for that long, and one made again would deliver every message again; shovel "
                "needs a durable consumer without it"
            )
        ack_wait = config.ack_wait or 30.0
        if ack_wait < self.shutdown_timeout_s:
            log.warning(
                "consumer %s has ack_wait %gs, shorter than the shutdown timeout (%gs): messages "
                "held while stopping may be redelivered to another replica and stored twice",
                spec.consumer,
                ack_wait,
                self.shutdown_timeout_s,
            )
        return info

    async def _consumer_info(self, js: JetStreamContext) -> ConsumerInfo | None:
        """The consumer's state; None if it does not exist. Raises _NotNow."""
        try:
            info: ConsumerInfo = await js.consumer_info(self.spec.stream, self.spec.consumer)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as e:
            raise _NotNow(f"cannot look up consumer {self.spec.consumer}: {e!r}") from e
        return info

    async def _create_consumer(self, js: JetStreamContext) -> ConsumerInfo:
        """Creates the durable pull consumer (or takes the one another replica created at the
        same moment). Raises _NotNow, or SourceError when the server refuses to create it."""
        spec = self.spec
        config = ConsumerConfig(
            durable_name=spec.consumer,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=spec.subject,
        )
        try:
            info: ConsumerInfo = await js.add_consumer(spec.stream, config)
        except nats.js.errors.BadRequestError as e:
            # Another replica created it first, with other settings: use theirs. With none
            # there, the server refused these settings (a limit of its own, say): asking again
            # would be refused again.
            theirs = await self._consumer_info(js)
            if theirs is None:
                raise SourceError(
                    f"cannot create consumer {spec.consumer}: {e.description or repr(e)}"
                ) from e
            return theirs
        except (nats.errors.Error, TimeoutError) as e:
            raise _NotNow(f"cannot create consumer {spec.consumer}: {e!r}") from e
        log.info(
            "created durable pull consumer %s on stream %s (ack_wait %gs, max_ack_pending %d, "
            "filter %s)",
            spec.consumer,
            spec.stream,
            self.ack_wait_s,
            self.max_ack_pending,
            spec.subject or "none",
        )
        return info

    # --- callbacks of the client (they run on its tasks; they only record) --------------------

    async def _on_error(self, e: Exception) -> None:
        log.warning("NATS: %s", e or type(e).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS: disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        log.info("NATS: reconnected to %s", url.netloc if url is not None else "?")
        # The acknowledgements not confirmed go out again now, and the reader pulls again.
        self._durable_progress.set()
        self._room.set()
        # No pull reached the server meanwhile: what it would have delivered again comes now.
        self._restored_until = max(
            self._restored_until, asyncio.get_running_loop().time() + RESTORED_MARGIN_S
        )

    async def _on_delivery(self, msg: Msg) -> None:
        self._arrived.append((msg, time.monotonic()))
        self._wake.set()

    async def _on_ack_confirmed(self, msg: Msg) -> None:
        _, _, tail = msg.subject.rpartition(".")
        if not tail.isdigit():
            return
        if msg.headers and msg.headers.get("Status"):
            # Not a confirmation: a status the server sends in its place, 503 (no responders)
            # when nothing subscribes to the acknowledgement subject, as while the consumer
            # has no leader (its server died, an election). The acknowledgement was not
            # applied: it stays unconfirmed, sent again after ACK_RESEND_S, listed as such.
            log.debug("NATS: acknowledgement of %s not applied: %s", tail, msg.headers)
            return
        if self._confirming:
            self._confirming.discard(int(tail))
            if not self._confirming:
                self._all_confirmed.set()
        entry = self._ledger.confirmed(int(tail))
        if entry is None:
            return
        self._acknowledged(entry)
        self._room.set()

    def _acknowledged(self, entry: Entry) -> None:
        """The server holds a delivery acknowledged: counted once, whether its confirmation or
        the acknowledgement floor said so first."""
        self.progress.acked += 1
        if entry.fetched_at is not None:
            self.progress.ack_latency(time.monotonic() - entry.fetched_at)

    # --- reading ----------------------------------------------------------------------

    def _client(self) -> Client:
        if self._nc is None:
            raise SourceError("the NATS source was not opened")
        return self._nc

    def _take_arrived(self) -> None:
        """Sorts what arrived: new messages are held, redeliveries of messages stored here
        are acknowledged (once durable) or dropped (still being stored)."""
        while self._arrived:
            msg, at = self._arrived.popleft()
            if not msg.reply:
                # A status of a pull request (no messages, expired, refused): not a message.
                continue
            try:
                meta = msg.metadata
            except nats.errors.Error:
                log.warning("ignoring a message without JetStream metadata on %s", msg.subject)
                continue
            seq = meta.sequence.stream
            self.progress.fetched += 1
            if meta.num_delivered > 1:
                self.progress.redelivered += 1
            entry = self._ledger.known(seq, msg.reply)
            if entry is not None:
                self.progress.skipped += 1
                if entry.durable:
                    # Acknowledged (again: the server delivered it again) by the acks task.
                    self._durable_progress.set()
                continue
            if seq in self._held_seqs:
                continue
            self._held_seqs.add(seq)
            self._held.append((seq, msg, at))

    def _batch(self) -> Batch | None:
        """A batch of the held messages, as many as the checkpoint's listing has room for."""
        held = self._held
        n = len(held)
        while n and not self._ledger.fits((s for s, _, _ in held[:n]), LISTING_MAX_CHARS):
            n //= 2
        if not n:
            return None
        taken, self._held = held[:n], held[n:]
        self._held_seqs.difference_update(seq for seq, _, _ in taken)
        taken.sort(key=lambda t: t[0])
        data = b"".join(record_of(seq, msg) for seq, msg, _ in taken)
        listing = self._ledger.hand_over(
            [(seq, msg.reply, at) for seq, msg, at in taken], LISTING_MAX_CHARS
        )
        self._offset = max(self._offset, taken[-1][0])
        origin = NatsOrigin(
            self.spec.stream,
            self.spec.consumer,
            self._created,
            listing.unconfirmed,
            self._consumer_created,
            listing.confirmed,
        )
        return Batch(data, len(taken), self._offset, encode(origin))

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        nc = self._client()
        self._offset = max(self._offset, start_offset)
        loop = asyncio.get_running_loop()
        requested = 0
        lost_at = 0.0
        refused_until = 0.0
        while True:
            room = self.max_unacked - self._ledger.in_flight() - len(self._held) - requested
            if requested == 0 and room > 0 and loop.time() >= refused_until:
                if await self._pull(nc, min(self.spec.batch, room)):
                    requested = min(self.spec.batch, room)
                    lost_at = loop.time() + PULL_EXPIRES_S + PULL_LOST_S
                    if not self._held:
                        self._unstalled()
                else:
                    # No server now: no request piles up in the client's buffer meanwhile.
                    refused_until = loop.time() + PULL_REFUSED_PAUSE_S
            self._wake.clear()
            if not self._arrived and not self._held:
                waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
                timeout: float | None = max(lost_at - loop.time(), 0.01)
                if requested == 0:
                    self._room.clear()
                    waits.add(asyncio.ensure_future(self._room.wait()))
                    timeout = max(refused_until - loop.time(), 0.01) if refused_until else None
                    if room <= 0:
                        # Everything this replica may hold is held: waiting for room.
                        timeout = _sooner(timeout, self._stall(listing_full=False))
                try:
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if requested and loop.time() >= lost_at and not self._arrived:
                    requested = 0
                    continue
            refused_until = 0.0
            for msg, _ in self._arrived:
                status = (msg.headers or {}).get("Status") if not msg.reply else None
                if status is None:
                    requested = max(requested - 1, 0)
                elif status in ("404", "408"):
                    # No messages, or the request expired: ask again.
                    requested = 0
                elif status == "409":
                    # The server ended the request (a leader change, a limit): ask again soon.
                    description = (msg.headers or {}).get("Description", "")
                    if "consumer deleted" in description.lower():
                        raise SourceError(
                            f"consumer {self.spec.consumer} was deleted on the server: nothing "
                            "more can be read through it, and one made again would deliver "
                            "every message again"
                        )
                    log.debug("NATS: pull request ended: %s", msg.headers)
                    requested = 0
                    refused_until = loop.time() + PULL_REFUSED_PAUSE_S
            self._take_arrived()
            batch = self._batch()
            if batch is None:
                if self._held:
                    # The listing is full of this replica's unconfirmed messages: wait for
                    # confirmations (the acknowledging task looks at the consumer sooner).
                    self._listing_full = True
                    self._durable_progress.set()
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._stall(listing_full=True)):
                            await self._room.wait()
                continue
            self._unstalled()
            yield batch

    def _stall(self, listing_full: bool) -> float | None:
        """The reader waits for room: timed from its first such wait, and said with the cause
        (a WARNING, counted in progress.stalls) once it has waited STALL_WARN_S. Returns how
        much longer it may wait before that (None: said already)."""
        now = time.monotonic()
        progress = self.progress
        if not progress.stall_started:
            progress.stall_started = now
        waited = now - progress.stall_started
        if self._stall_said:
            return None
        if waited < STALL_WARN_S:
            return STALL_WARN_S - waited
        self._stall_said = True
        progress.stalls += 1
        log.warning(
            "NATS: reading has waited %.0fs for room: %s", waited, self._stall_cause(listing_full)
        )
        return None

    def _stall_cause(self, listing_full: bool) -> str:
        counts = self._ledger.counts()
        nc = self._nc
        parts = []
        if counts.pending:
            parts.append(f"{counts.pending} fetched and not yet made durable by storage")
        if counts.durable:
            parts.append(
                f"{counts.durable} stored, their acknowledgement not confirmed by the server"
                + ("" if nc is not None and nc.is_connected else " (no server connected)")
            )
        if counts.restored:
            parts.append(
                f"{counts.restored} stored before this start, listed until the server delivers "
                "them again or ack_wait has passed"
            )
        what = (
            "the checkpoint's listing of the stored messages not confirmed acknowledged is full"
            if listing_full
            else f"this replica holds the most messages it may ({self.max_unacked}) fetched "
            "and not confirmed acknowledged"
        )
        return f"{what}: {', '.join(parts)}"

    def _unstalled(self) -> None:
        """The reader pulled or handed a batch over: whatever wait for room it had is over."""
        progress = self.progress
        if progress.stall_started and self._stall_said:
            log.info(
                "NATS: reading again after waiting %.1fs for room",
                time.monotonic() - progress.stall_started,
            )
        progress.stall_started = 0.0
        self._stall_said = False

    async def _pull(self, nc: Client, n: int) -> bool:
        """Asks the consumer for `n` messages; False when no server is connected."""
        if not nc.is_connected:
            return False
        request = {"batch": n, "expires": int(PULL_EXPIRES_S * 1e9)}
        try:
            await nc.publish(self._pull_subject, json.dumps(request).encode(), self._inbox)
        except nats.errors.OutboundBufferLimitError:
            # Disconnected since, with the client's buffer full: ask again once reconnected.
            return False
        except nats.errors.Error as e:
            raise SourceError(f"pulling from {self.description}: {e!r}") from e
        return True

    def stop_tail(self) -> list[Piece]:
        self._take_arrived()
        tail: list[Piece] = []
        while (batch := self._batch()) is not None:
            tail.append(batch)
        return tail

    # --- acknowledging ----------------------------------------------------------------------

    def collectors(self) -> list[Collector]:
        return [AckProgressCollector(self.progress), self._ack_latency]

    def durable_progress(self) -> None:
        """Storage made progress: wakes the acknowledging task."""
        self._durable_progress.set()

    async def _publish(self, subject: str, payload: bytes, reply: str = "") -> bool:
        nc = self._nc
        if nc is None or nc.is_closed:
            return False
        try:
            # Appends to the client's buffer (its flusher sends it), also while reconnecting.
            await nc.publish(subject, payload, reply)
        except nats.errors.Error as e:
            log.debug("NATS: could not send %r to %s: %s", payload, subject, e)
            return False
        return True

    async def _send_acks(self, records_durable: int) -> None:
        """Acknowledges the messages of batches that became durable, the redeliveries of
        messages stored here, and (again) those whose acknowledgement was not confirmed;
        only while connected (the ledger keeps what is due until then)."""
        self._ledger.made_durable(records_durable)
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        now = time.monotonic()
        for seq, reply in self._ledger.unconfirmed(now - ACK_RESEND_S):
            if await self._publish(reply, b"+ACK", f"{self._ack_inbox}.{seq}"):
                self._ledger.entries[seq].ack_sent_at = now

    async def _look_at_consumer(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        try:
            info = await nc.jetstream().consumer_info(
                self.spec.stream, self.spec.consumer, timeout=1.0
            )
        except nats.js.errors.NotFoundError:
            self._consumer_missing += 1
            if self._consumer_missing == MISSING_WARN_AFTER:
                log.warning(
                    "NATS: the server says consumer %s of stream %s does not exist: nothing "
                    "more is delivered (deleted? shovel refuses to start on it again, since "
                    "one made again would deliver every message again)",
                    self.spec.consumer,
                    self.spec.stream,
                )
            return
        except (nats.errors.Error, TimeoutError) as e:
            log.debug("NATS: consumer info: %s", e)
            return
        self._consumer_missing = 0
        self.progress.consumer_pending = info.num_pending or 0
        self.progress.consumer_ack_pending = info.num_ack_pending or 0
        if info.ack_floor is None:
            return
        dropped, acknowledged = self._ledger.below_floor(info.ack_floor.stream_seq)
        for entry in acknowledged:
            self._acknowledged(entry)
        if dropped:
            self._room.set()

    def _drop_restored(self) -> None:
        """Once ack_wait has passed since the consumer was bound (connected all along, see
        RESTORED_MARGIN_S): the restored entries not delivered again leave the ledger."""
        nc = self._nc
        if (
            not self._ledger.restored()
            or nc is None
            or not nc.is_connected
            or asyncio.get_running_loop().time() < self._restored_until
        ):
            return
        gone = self._ledger.drop_restored()
        log.info(
            "NATS: %d messages stored before this start were not delivered again within "
            "ack_wait: no longer listed (the server holds them acknowledged, or another "
            "replica stored them)",
            gone,
        )
        self._room.set()

    async def acknowledge(self, records_durable: Callable[[], int]) -> None:
        """Acknowledges what storage made durable, until cancelled (see the module docstring)."""
        loop = asyncio.get_running_loop()
        last_look = -CONSUMER_INFO_S
        while True:
            self._durable_progress.clear()
            await self._send_acks(records_durable())
            since = loop.time() - last_look
            if since >= CONSUMER_INFO_S or (self._listing_full and since >= LISTING_FULL_LOOK_S):
                last_look = loop.time()
                self._listing_full = False
                await self._look_at_consumer()
                self._drop_restored()
            # Not asyncio.wait_for: on 3.11 it swallows a cancellation that comes as the event
            # is set (at every stop, just after the queue drain), and the stop would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_RESEND_S / 2):
                    await self._durable_progress.wait()

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        """After storage was closed: acknowledges what is durable, gives back what is not,
        and closes the connection, all within `timeout_s`. With no server connected nothing
        is sent: the server redelivers it all after ack_wait (a restart here acknowledges what
        is stored without storing it again)."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        started = time.monotonic()
        nacked_before = self.progress.nacked
        # Whether the acknowledgements and the negative ones could go out, as they went.
        connected = nc.is_connected
        # What matters most goes first: acknowledgements of what is durable.
        due_back = await self._settle(records_durable)
        if self._fetch_sub is not None and nc.is_connected:
            # No more deliveries; what the last pull request still brings is given back too.
            try:
                await asyncio.wait_for(
                    self._fetch_sub.drain(),  # type: ignore[no-untyped-call]
                    max(deadline - loop.time(), 0) * INBOX_DRAIN_SHARE,
                )
            except (nats.errors.Error, TimeoutError) as e:
                log.debug("NATS: draining the pull inbox: %r", e)
            due_back += await self._settle(records_durable)
        # Counted as sent, not as due: a negative acknowledgement that could not be sent
        # leaves its message to ack_wait.
        given_back = self.progress.nacked - nacked_before
        # Confirmations come on the acknowledgement inbox; counted down, not scanned for.
        self._confirming = {
            seq
            for seq, e in self._ledger.entries.items()
            if e.ack_sent_at is not None and not e.confirmed
        }
        if self._confirming and nc.is_connected:
            self._all_confirmed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._all_confirmed.wait(),
                    min(CONFIRM_WAIT_S, max(deadline - loop.time(), 0)),
                )
        self._closing = True
        await self._disconnect(nc, deadline)
        # Taken once the connection is closed, with every confirmation that came: the stored
        # messages (of this run or listed by the checkpoint) whose acknowledgement is not
        # confirmed, whether it went out or could not. The next start counts the same ones.
        not_confirmed = self._ledger.not_confirmed()
        await self._record_stop(not_confirmed, deadline)
        if not connected:
            log.warning(
                "NATS: no server connected at the stop: %d stored messages stay "
                "unacknowledged and %d not stored are not given back; the server delivers "
                "them again after ack_wait (a restart here acknowledges the stored ones)",
                len(not_confirmed),
                due_back - given_back,
            )
            return
        log.log(
            logging.WARNING if due_back > given_back else logging.INFO,
            "NATS: %d messages acknowledged, %d stored messages await acknowledgement (not "
            "confirmed), %d given back for redelivery, %d left to ack_wait; connection closed "
            "in %.3fs",
            self.progress.acked,
            len(not_confirmed),
            given_back,
            due_back - given_back,
            time.monotonic() - started,
        )

    async def _record_stop(self, not_confirmed: list[int], deadline: float) -> None:
        """Writes the stop record beside the checkpoint (ledger.StopRecord), bounded in
        time. A failure is said, not raised: the next start then goes by the checkpoint alone,
        which lists as unconfirmed what this stop saw confirmed."""
        out = self._output_dir
        if out is None:
            return
        record = StopRecord(self._ledger.durable_listing, encode_ranges(not_confirmed))
        loop = asyncio.get_running_loop()
        job = off_loop(write_stop_record, out, record)
        limit_s = min(STOP_RECORD_S, max(deadline - loop.time(), LAST_WORD_S))
        try:
            await asyncio.wait_for(job, limit_s)
        except TimeoutError:
            log.warning(
                "NATS: writing %s took over %gs: going on without it (the next start counts "
                "the stored messages awaiting acknowledgement from the checkpoint alone)",
                out / STOP_RECORD_FILE,
                limit_s,
            )
        except OSError as e:
            log.warning(
                "NATS: cannot write %s: %s (the next start counts the stored messages awaiting "
                "acknowledgement from the checkpoint alone)",
                out / STOP_RECORD_FILE,
                e,
            )

    async def _settle(self, records_durable: int) -> int:
        """At a stop: acknowledges what is durable and gives back the rest (negative
        acknowledgement, counted in progress.nacked as each is sent), so that another replica
        takes it at once; returns how many messages were due to be given back, sent or not."""
        self._take_arrived()
        await self._send_acks(records_durable)
        back = [msg.reply for _, msg, _ in self._held]
        back += [reply for _, reply in self._ledger.take_not_durable()]
        self._held.clear()
        self._held_seqs.clear()
        nc = self._nc
        if nc is not None and nc.is_connected:
            for reply in back:
                if await self._publish(reply, b"-NAK"):
                    self.progress.nacked += 1
        return len(back)

    async def _disconnect(self, nc: Client, deadline: float) -> None:
        """Makes sure the server has what was sent (a round trip), then closes the connection:
        each bounded by the deadline (the client's own drain is not: it waits 10 s for a
        silent server whatever its caller's timeout)."""
        loop = asyncio.get_running_loop()
        if nc.is_connected:
            try:
                await asyncio.wait_for(nc.flush(), max(deadline - loop.time(), LAST_WORD_S))
            except (nats.errors.Error, TimeoutError) as e:
                log.warning("NATS: the server did not answer before the deadline (%r)", e)
        try:
            await asyncio.wait_for(nc.close(), max(deadline - loop.time(), LAST_WORD_S))
        except (nats.errors.Error, OSError, TimeoutError) as e:
            # A server gone (its socket reset) or silent: nothing more to say to it.
            log.info("NATS: the connection closed uncleanly: %r", e)

    async def close(self) -> None:
        """Closes the connection without acknowledging anything (a run that never started)."""
        nc = self._nc
        self._closing = True
        if nc is not None and not nc.is_closed:
            await self._disconnect(nc, asyncio.get_running_loop().time() + CLOSE_S)
