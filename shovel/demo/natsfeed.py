"""A NATS run's stream, from the demo's side: created, fed, watched, and asked afterwards what
is still deliverable.

For each run, before the child starts: a stream of its own (in memory) with one durable pull
consumer (explicit acknowledgements, a short ack_wait so that what a run leaves unacknowledged
comes back within the demo), and N messages published into it, each with a Nats-Msg-Id: a
backlog, which the child reads as fast as it can. While it runs, the consumer's acknowledged
count is sampled for the timeline. After the child
has exited: the server's view (acknowledgement floor, pending acknowledgements, redeliveries),
then the drain: every message the consumer still delivers is pulled, noted and acknowledged (so
that it is not delivered again while the drain goes on: the server's view was taken before),
until the server has nothing left, neither undelivered nor awaiting an acknowledgement. What
the drain pulled is what was still deliverable.

No wait here has a fixed end: a loaded machine only makes them longer. Each ends when it has
made no progress for STALL_S, longer than ack_wait since what the child left unacknowledged
comes back only ack_wait after it was delivered. A drain that ends so is incomplete, and the
accounting then calls what it did not reach unknown, not lost (natstally.py).
Everything runs on an event loop of its own, on a thread of its own (natsloop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from dataclasses import dataclass, field

from shovel.demo.natsloop import API_TIMEOUT_S, StreamOnThread, answered
from shovel.demo.natsserver import ACK_WAIT_S
from shovel.demo.stall import StallClock

CONSUMER = "demo"
MAX_ACK_PENDING = 50_000
PUBLISH_FLUSH_EVERY = 1000
# A wait on the server (the stream taking the backlog, the drain) is given up when it has made
# no progress for this long (see the module docstring).
STALL_S = ACK_WAIT_S + 6.0
# The drain's pulls: up to this many messages, each pull waiting up to this long for them.
DRAIN_BATCH = 1000
DRAIN_PULL_S = 0.5


def have_nats_py() -> bool:
    """Whether nats-py, with which the demo fills, drains and reads back its streams, is
    installed."""
    return importlib.util.find_spec("nats") is not None


def msg_id(n: int) -> str:
    """The Nats-Msg-Id of the n-th message published (from 1)."""
    return f"demo-{n}"


def payload(n: int) -> bytes:
    """The n-th message's body: its number, then filler, about 100 bytes."""
    return (b"message %d " % n).ljust(100, b"x")


@dataclass(slots=True)
class ServerView:
    """What the server says about a run's consumer just after the child exited."""

    # Messages in the stream (the stream sequence of the last one).
    published: int
    # Every message up to this stream sequence is acknowledged.
    ack_floor: int
    # Delivered and neither acknowledged nor given up: delivered again after ack_wait.
    num_ack_pending: int
    # Messages delivered more than once so far.
    num_redelivered: int
    # Never delivered.
    num_pending: int

    @property
    def acked(self) -> int:
        """Messages acknowledged (every delivered message not pending an acknowledgement)."""
        return self.published - self.num_pending - self.num_ack_pending


@dataclass(slots=True)
class Deliverable:
    """What the consumer still delivers after the run."""

    seqs: set[int] = field(default_factory=set)
    # Those of them delivered before (to the child), and the seconds from the child's exit to
    # the last of those (None: none came).
    again: set[int] = field(default_factory=set)
    last_after_exit_s: float | None = None
    # The drain went on until the server had nothing left. When not: why it stopped.
    complete: bool = True
    stalled: str | None = None
    # Seconds the drain took.
    drain_s: float = 0.0


class NatsFeed(StreamOnThread):
    """One run's stream: see the module docstring."""

    def __init__(self, url: str, stream: str, messages: int) -> None:
        super().__init__(url, stream, f"{stream}.orders", f"feed-{stream}")
        self.messages = messages
        # (monotonic time, messages acknowledged), for the timeline.
        self.acked_samples: list[tuple[float, int]] = []

    @property
    def source(self) -> str:
        """The child's --source."""
        return f"nats://{self.url}/{self.stream}?consumer={CONSUMER}"

    def start(self) -> None:
        """Creates the stream and its consumer, publishes the messages and waits until the
        stream holds them all, starts sampling the consumer."""
        self._call(self._start())

    async def _start(self) -> None:
        from nats.js.api import (  # noqa: PLC0415
            AckPolicy,
            ConsumerConfig,
            DeliverPolicy,
            StorageType,
            StreamConfig,
        )

        nc = await self._connect("shovel-demo-feed")
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        await js.add_stream(
            StreamConfig(name=self.stream, subjects=[self.subject], storage=StorageType.MEMORY)
        )
        await js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=CONSUMER,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )
        for n in range(1, self.messages + 1):
            await nc.publish(self.subject, payload(n), headers={"Nats-Msg-Id": msg_id(n)})
            if n % PUBLISH_FLUSH_EVERY == 0:
                await nc.flush()
        await nc.flush()
        stored = StallClock(STALL_S)
        while True:
            info = await answered(js.stream_info(self.stream))
            last_seq = info.state.last_seq if info is not None else None
            if last_seq is not None and last_seq >= self.messages:
                break
            if not stored.moving(last_seq):
                raise TimeoutError(
                    f"stream {self.stream} took no more messages for {STALL_S:g} s "
                    f"(it holds {last_seq} of {self.messages})"
                )
            await asyncio.sleep(0.01)
        self._start_sampling(self._sample_acked)

    async def _sample_acked(self) -> None:
        assert self._nc is not None
        info = await self._nc.jetstream().consumer_info(self.stream, CONSUMER, timeout=1.0)
        delivered = info.delivered.stream_seq if info.delivered else 0
        acked = (delivered or 0) - (info.num_ack_pending or 0)
        self.acked_samples.append((time.monotonic(), acked))

    def server_view(self) -> ServerView:
        """The consumer's state now (call after the child exited)."""
        return self._call(self._server_view())

    async def _server_view(self) -> ServerView:
        assert self._nc is not None
        js = self._nc.jetstream(timeout=API_TIMEOUT_S)
        stream = await js.stream_info(self.stream)
        info = await js.consumer_info(self.stream, CONSUMER)
        return ServerView(
            published=stream.state.last_seq,
            ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_redelivered=info.num_redelivered or 0,
            num_pending=info.num_pending or 0,
        )

    def deliverable(self, exited_at: float) -> Deliverable:
        """Every message the consumer still delivers (the drain: see the module docstring)."""
        return self._call(self._deliverable(exited_at))

    async def _deliverable(self, exited_at: float) -> Deliverable:
        import nats.errors  # noqa: PLC0415  (the optional 'demo' extra)

        assert self._nc is not None
        js = self._nc.jetstream(timeout=API_TIMEOUT_S)
        found = Deliverable()
        sub = await js.pull_subscribe_bind(CONSUMER, self.stream)
        # Progress: a message not pulled before, or fewer messages left on the server than
        # ever before (both are bounded, so the drain ends).
        progress = StallClock(STALL_S)
        started = time.monotonic()
        try:
            while True:
                # 1. What the server has left (None: it did not answer in time): never
                # delivered, or delivered and awaiting an acknowledgement (from the child, back
                # after ack_wait; or from the drain, its acknowledgements not applied yet).
                info = await answered(js.consumer_info(self.stream, CONSUMER))
                left = (
                    None if info is None else (info.num_pending or 0) + (info.num_ack_pending or 0)
                )
                if left == 0:
                    return found
                if not progress.moving(None if left is None else -left, len(found.seqs)):
                    found.complete = False
                    found.stalled = (
                        f"the drain of what the consumer still delivers got nothing new for "
                        f"{progress.stall_s:g} s with "
                        + ("an unknown number of" if left is None else f"{left:,}")
                        + " messages still pending on the server"
                    )
                    return found
                # 2. Pull what comes, note it, acknowledge it.
                try:
                    msgs = await sub.fetch(DRAIN_BATCH, timeout=DRAIN_PULL_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if seq not in found.seqs:
                        found.seqs.add(seq)
                        if meta.num_delivered > 1:
                            found.again.add(seq)
                            found.last_after_exit_s = round(time.monotonic() - exited_at, 3)
                    with contextlib.suppress(nats.errors.Error):
                        await msg.ack()
        finally:
            found.drain_s = round(time.monotonic() - started, 3)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
