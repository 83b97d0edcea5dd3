"""The NATS JetStream source: a durable pull consumer, acknowledged only once stored durably.

Protocol (the runner drives it; see source_api.AcknowledgedSource):
  open()       connects, checks the stream against the checkpoint, binds the durable pull
               consumer (creating it when missing, with explicit acknowledgements).
  pieces()     the reader task: pull requests on an inbox of our own, one batch per arrival.
  run_acks()   a task beside reader and storage: once storage says a batch is durable (its
               checkpoint on disk), acknowledges its messages and waits for the server to
               confirm each acknowledgement (ledger in natsledger.py).
  stop_tail()  the messages that arrived but were not handed over yet: stored too.
  finish()     after storage is closed (everything drained is fsynced): acknowledges what is
               durable, gives back (negative acknowledgement) what is not, so that another
               replica takes it at once, then drains and closes the connection.

Stored record, one line per message (JSON, ASCII only):
  {"seq":STREAM_SEQUENCE,"subject":"SUBJECT","id":"NATS-MSG-ID","data":"BASE64"}
`id` is present only when the message has a Nats-Msg-Id header; `data` is the payload in
standard base64, so any bytes (newlines included) are stored unambiguously. Other headers are
not kept. The committed offset is the highest stream sequence stored here.

Sizing: one replica holds at most `batch * (queue_max_batches + 4)` messages fetched and not
yet acknowledged; a consumer shovel creates gets `max_ack_pending` of 16 times that (room for
16 replicas at full pace) and `ack_wait` of the shutdown timeout plus 10 s, at least 30 s: a
message held by a replica that is stopping is acknowledged before the server would give it to
another one. A replica killed outright (SIGKILL, a lost node) leaves its unacknowledged
messages to be redelivered after `ack_wait`: to another replica, which stores them (a message
the killed one had already made durable is then stored twice, in two output directories: the
`seq` says so), or to its own restart, which acknowledges them without storing them again.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from shovel.batches import Batch, Piece
from shovel.identity import DescriptorError, NatsOrigin, decode, encode, kind_of
from shovel.natsledger import Ledger, decode_ranges
from shovel.natsurl import NatsSpec
from shovel.source_api import AckProgress, SourceError, SourceMismatch

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
# The checkpoint keeps its source descriptor in at most 4096 bytes (a native limit); the
# ledger's listing gets this much of it.
LISTING_MAX_CHARS = 3000
# How long finish() waits for the last acknowledgements to be confirmed.
CONFIRM_WAIT_S = 2.0
# After the server turned a pull request down (409: too many waiting requests, the
# max_ack_pending limit reached, a leader change), the next one waits this long.
PULL_REFUSED_PAUSE_S = 0.5


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


class NatsSource:
    """See the module docstring."""

    replayable = True

    def __init__(self, spec: NatsSpec, queue_max_batches: int, shutdown_timeout_s: float) -> None:
        self.spec = spec
        self.description = spec.describe()
        self.max_unacked = spec.batch * (queue_max_batches + 4)
        self.ack_wait_s = spec.ack_wait_s or max(30.0, shutdown_timeout_s + 10.0)
        self.max_ack_pending = spec.max_ack_pending or self.max_unacked * REPLICAS_ROOM
        self.shutdown_timeout_s = shutdown_timeout_s
        self.progress = AckProgress()
        self._restored: NatsOrigin | None = None
        self._ledger = Ledger(())
        self._created = ""
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
        # Acknowledgements to send: (seq, subject).
        self._acks_due: list[tuple[int, str]] = []
        self._durable_progress = asyncio.Event()
        self._room = asyncio.Event()
        self._offset = 0
        self._closing = False
        # The reader waits for the checkpoint's listing to shrink.
        self._listing_full = False

    # --- start -------------------------------------------------------------------------

    def resume(self, committed_offset: int, descriptor: str) -> str:
        try:
            origin = decode(descriptor)
        except DescriptorError as e:
            raise SourceMismatch(f"the checkpoint's record of its source is unreadable: {e}") from e
        if origin is not None:
            if not isinstance(origin, NatsOrigin):
                raise SourceMismatch(
                    f"this output directory holds records from {kind_of(origin)}, and the "
                    f"source now is {self.description}: refusing to mix them (use a new "
                    "--output-dir for this source)"
                )
            if (origin.stream, origin.consumer) != (self.spec.stream, self.spec.consumer):
                raise SourceMismatch(
                    f"this output directory holds records from {kind_of(origin)}, not from "
                    f"stream {self.spec.stream} consumer {self.spec.consumer}: refusing to mix "
                    "them (use a new --output-dir)"
                )
            try:
                self._ledger = Ledger(decode_ranges(origin.stored))
            except DescriptorError as e:
                raise SourceMismatch(f"the checkpoint's list of stored messages: {e}") from e
        self._restored = origin
        self._offset = committed_offset
        listed = len(self._ledger.entries)
        return f"consuming after stream sequence {committed_offset}" + (
            f"; {listed} stored messages await acknowledgement" if listed else ""
        )

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
        return (
            f"consumer {spec.consumer}: ack_wait {info.config.ack_wait or 0:g}s, "
            f"max_ack_pending {info.config.max_ack_pending}, {info.num_pending or 0} messages "
            "pending"
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
        info: ConsumerInfo
        try:
            info = await js.consumer_info(spec.stream, spec.consumer)
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(
                durable_name=spec.consumer,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                max_ack_pending=self.max_ack_pending,
                filter_subject=spec.subject,
            )
            try:
                info = await js.add_consumer(spec.stream, config)
            except nats.js.errors.BadRequestError:
                # Another replica created it first, with other settings: use theirs.
                info = await js.consumer_info(spec.stream, spec.consumer)
            else:
                log.info(
                    "created durable pull consumer %s on stream %s (ack_wait %gs, "
                    "max_ack_pending %d, filter %s)",
                    spec.consumer,
                    spec.stream,
                    self.ack_wait_s,
                    self.max_ack_pending,
                    spec.subject or "none",
                )
        except (nats.errors.Error, TimeoutError) as e:
            raise _NotNow(f"cannot look up consumer {spec.consumer}: {e!r}") from e
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

    # --- callbacks of the client (they run on its tasks; they only record) --------------------

    async def _on_error(self, e: Exception) -> None:
        log.warning("NATS: %s", e or type(e).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("NATS: disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        log.info("NATS: reconnected to %s", url.netloc if url is not None else "?")

    async def _on_delivery(self, msg: Msg) -> None:
        self._arrived.append((msg, time.monotonic()))
        self._wake.set()

    async def _on_ack_confirmed(self, msg: Msg) -> None:
        _, _, tail = msg.subject.rpartition(".")
        if not tail.isdigit():
            return
        entry = self._ledger.confirmed(int(tail))
        if entry is None:
            return
        self.progress.acked += 1
        if entry.fetched_at is not None:
            self.progress.ack_latency(time.monotonic() - entry.fetched_at)
        self._room.set()

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
                    self._acks_due.append((seq, msg.reply))
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
        while n and len(self._ledger.ranges_with(s for s, _, _ in held[:n])) > LISTING_MAX_CHARS:
            n //= 2
        if not n:
            return None
        taken, self._held = held[:n], held[n:]
        self._held_seqs.difference_update(seq for seq, _, _ in taken)
        taken.sort(key=lambda t: t[0])
        data = b"".join(record_of(seq, msg) for seq, msg, _ in taken)
        self._ledger.hand_over([(seq, msg.reply, at) for seq, msg, at in taken])
        self._offset = max(self._offset, taken[-1][0])
        origin = NatsOrigin(
            self.spec.stream, self.spec.consumer, self._created, self._ledger.ranges_with(())
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
                n = min(self.spec.batch, room)
                request = {"batch": n, "expires": int(PULL_EXPIRES_S * 1e9)}
                try:
                    await nc.publish(self._pull_subject, json.dumps(request).encode(), self._inbox)
                except nats.errors.Error as e:
                    raise SourceError(f"pulling from {self.description}: {e!r}") from e
                requested = n
                lost_at = loop.time() + PULL_EXPIRES_S + PULL_LOST_S
            self._wake.clear()
            if not self._arrived and not self._held:
                waits: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
                timeout: float | None = max(lost_at - loop.time(), 0.01)
                if requested == 0:
                    self._room.clear()
                    waits.add(asyncio.ensure_future(self._room.wait()))
                    timeout = max(refused_until - loop.time(), 0.01) if refused_until else None
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
                    log.debug("NATS: pull request ended: %s", msg.headers)
                    requested = 0
                    refused_until = loop.time() + PULL_REFUSED_PAUSE_S
            self._take_arrived()
            batch = self._batch()
            if batch is None:
                if self._held:
                    # The listing is full: wait for the acknowledgement floor to pass some of
                    # it (the acknowledging task looks at the consumer sooner).
                    self._listing_full = True
                    self._durable_progress.set()
                    self._room.clear()
                    await self._room.wait()
                continue
            yield batch

    def stop_tail(self) -> list[Piece]:
        self._take_arrived()
        tail: list[Piece] = []
        while (batch := self._batch()) is not None:
            tail.append(batch)
        return tail

    # --- acknowledging ----------------------------------------------------------------------

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
        messages stored here, and (again) those whose acknowledgement was not confirmed."""
        due, self._acks_due = self._acks_due, []
        entries = self._ledger.entries
        for seq in self._ledger.made_durable(records_durable):
            reply = entries[seq].reply
            if reply is not None:
                due.append((seq, reply))
        due += self._ledger.unconfirmed(time.monotonic() - ACK_RESEND_S)
        now = time.monotonic()
        for seq, reply in due:
            entry = entries.get(seq)
            if entry is None or entry.ack_sent_at == now:
                continue
            if await self._publish(reply, b"+ACK", f"{self._ack_inbox}.{seq}"):
                entry.ack_sent_at = now

    async def _look_at_consumer(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        try:
            info = await nc.jetstream().consumer_info(
                self.spec.stream, self.spec.consumer, timeout=1.0
            )
        except (nats.errors.Error, TimeoutError) as e:
            log.debug("NATS: consumer info: %s", e)
            return
        self.progress.consumer_pending = info.num_pending or 0
        self.progress.consumer_ack_pending = info.num_ack_pending or 0
        if info.ack_floor is not None and self._ledger.below_floor(info.ack_floor.stream_seq):
            self._room.set()

    async def run_acks(self, records_durable: Callable[[], int]) -> None:
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
            # asyncio.wait, not wait_for: on Python 3.11, wait_for returns a wake-up that came
            # just before a cancellation and drops the cancellation (the runner cancels this
            # task as storage reports progress; the stop then hung).
            progress = asyncio.ensure_future(self._durable_progress.wait())
            try:
                await asyncio.wait({progress}, timeout=ACK_RESEND_S / 2)
            finally:
                progress.cancel()

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        """After storage was closed: acknowledges what is durable, gives back what is not,
        drains and closes the connection, all within `timeout_s`."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        started = time.monotonic()
        if self._fetch_sub is not None:
            # No more deliveries: what the last pull request still brings is given back below.
            try:
                await asyncio.wait_for(
                    self._fetch_sub.drain(),  # type: ignore[no-untyped-call]
                    max(deadline - loop.time(), 0),
                )
            except (nats.errors.Error, TimeoutError) as e:
                log.debug("NATS: draining the pull inbox: %s", e)
        self._take_arrived()
        await self._send_acks(records_durable)
        back = [(seq, msg.reply) for seq, msg, _ in self._held]
        back += self._ledger.take_not_durable()
        self._held.clear()
        self._held_seqs.clear()
        for _, reply in back:
            if await self._publish(reply, b"-NAK"):
                self.progress.nacked += 1
        confirm_by = loop.time() + min(CONFIRM_WAIT_S, max(deadline - loop.time(), 0))
        while loop.time() < confirm_by and any(
            e.ack_sent_at is not None and not e.confirmed for e in self._ledger.entries.values()
        ):
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), max(confirm_by - loop.time(), 0))
            except TimeoutError:
                break
        self._closing = True
        try:
            await asyncio.wait_for(nc.drain(), max(deadline - loop.time(), 0.1))
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("NATS: the connection did not drain in time (%s); closing it", e or "")
        finally:
            if not nc.is_closed:
                await nc.close()
        unconfirmed = self._ledger.in_flight()
        log.info(
            "NATS: %d messages acknowledged (%d unconfirmed), %d given back for redelivery; "
            "connection closed in %.3fs",
            self.progress.acked,
            unconfirmed,
            len(back),
            time.monotonic() - started,
        )

    async def close(self) -> None:
        """Closes the connection without acknowledging anything (a run that never started)."""
        nc = self._nc
        self._closing = True
        if nc is not None and not nc.is_closed:
            await nc.close()
