"""The JetStream sink's side of the tests: streams made for it, the stream watched while shovel
writes to it, and a subject read back and compared with what went in."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.helpers import WAIT_S
from tests.helpers.natsservers import Cluster, Server, create_stream, poll

# Transient answers while a cluster elects its leaders or a server is away.
UNANSWERED = (nats.errors.Error, TimeoutError, OSError)


def sink_url(cluster: Cluster, stream: str, subject: str, options: str = "", user: str = "") -> str:
    """A --sink for `subject` of `stream` on the cluster's servers; `user` is USER:PASS."""
    at = f"{user}@" if user else ""
    return f"nats://{at}{cluster.urls}/{stream}?subject={subject}{options}"


async def make_stream(
    cluster: Cluster,
    stream: str,
    replicas: int = 1,
    *,
    atomic: bool = True,
    duplicate_window_s: float | None = None,
) -> None:
    """Creates `stream` on subjects STREAM.> with `replicas` copies, atomic batches allowed
    unless told, and the server's duplicate window unless told."""
    settings: dict[str, object] = {"allow_atomic": True} if atomic else {}
    if duplicate_window_s is not None:
        settings["duplicate_window"] = duplicate_window_s
    info = await create_stream(cluster, stream, replicas, **settings)
    # A server that does not know the setting would drop it, and the sink would fall back to
    # batches of one: not what a test of the fast path means to run.
    assert bool(info.config.allow_atomic) == atomic, info.config


async def _subject_count(nc: Client, stream: str, subject: str) -> int:
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def subject_count(cluster: Cluster, stream: str, subject: str) -> int:
    """How many messages the stream holds on `subject` (waits while no server answers)."""

    async def ask(nc: Client) -> int:
        return await _subject_count(nc, stream, subject)

    return poll(cluster, ask, f"an answer about {stream}", transient=UNANSWERED, interval_s=0.1)


def wait_for_count(
    cluster: Cluster,
    stream: str,
    subject: str,
    predicate: Callable[[int], bool],
    what: str,
) -> int:
    """Looks at the number of messages on `subject` every few milliseconds, on one connection
    (which moves to another server when its own goes away), until `predicate` holds; returns
    that number. Fails the test after WAIT_S."""

    async def ask(nc: Client) -> int | None:
        count = await _subject_count(nc, stream, subject)
        return count if predicate(count) else None

    return poll(
        cluster,
        ask,
        what,
        transient=UNANSWERED,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
    )


def stream_leader(cluster: Cluster, stream: str) -> Server:
    """The server that leads `stream` (waits while it has none)."""

    async def ask(nc: Client) -> str | None:
        info = await nc.jetstream().stream_info(stream)
        return info.cluster.leader if info.cluster is not None else None

    name = poll(cluster, ask, f"a leader of {stream}", transient=UNANSWERED, interval_s=0.05)
    return next(s for s in cluster.servers if s.name == name)


@dataclass(frozen=True)
class SinkMessage:
    """A message the sink wrote: its stream sequence, payload and headers."""

    seq: int
    data: bytes
    headers: dict[str, str]

    @property
    def offset(self) -> int:
        """The source offset after this record (its `Shovel-Offset` header)."""
        return int(self.headers["Shovel-Offset"])


def read_subject(cluster: Cluster, stream: str, subject: str) -> list[SinkMessage]:
    """Every message on `subject`, in stream order, through an ordered consumer (the client's
    own: in stream order, with flow control, it acknowledges nothing and leaves the stream as
    it was). Some 30,000 messages a second: the client's work per message."""

    async def read() -> list[SinkMessage]:
        nc = await cluster.connect()
        try:
            total = await _subject_count(nc, stream, subject)
            found: list[SinkMessage] = []
            complete = asyncio.Event()

            async def take(m: Msg) -> None:
                found.append(SinkMessage(m.metadata.sequence.stream, m.data, m.headers or {}))
                if len(found) >= total:
                    complete.set()

            if total == 0:
                return found
            sub = await nc.jetstream().subscribe(
                subject,
                stream=stream,
                cb=take,
                ordered_consumer=True,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
            try:
                await asyncio.wait_for(complete.wait(), WAIT_S)
            except TimeoutError:
                raise AssertionError(f"read {len(found)} of {total} messages") from None
            finally:
                await sub.unsubscribe()
            return found[:total]
        finally:
            await nc.close()

    return asyncio.run(read())


def records_of(messages: Sequence[SinkMessage]) -> bytes:
    """The records the messages carry, each with its newline again, in stream order."""
    return b"".join(m.data + b"\n" for m in messages)


def mismatch(got: bytes, expected: bytes) -> str:
    """Where two byte strings part, for an assertion message (they may be tens of MB)."""
    at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    if at is None:
        at = min(len(got), len(expected))
    line = expected.count(b"\n", 0, at)
    return (
        f"{len(got)} bytes for {len(expected)} expected; first difference at byte {at} "
        f"(record {line}): got {got[at : at + 60]!r}, expected {expected[at : at + 60]!r}"
    )


def assert_holds(messages: Sequence[SinkMessage], expected: bytes, offsets: Sequence[int]) -> None:
    """The messages are `expected`'s records exactly once each, in order, byte-exact; each
    carries its source offset (`offsets`, the offset after each record) in `Shovel-Offset` and
    a `Nats-Msg-Id` of a source id (16 hex digits of the source's descriptor, which changes as
    a followed file moves on) and that offset; stream sequences only go up."""
    got = records_of(messages)
    assert got == expected, mismatch(got, expected)
    assert [m.offset for m in messages] == list(offsets), "Shovel-Offset is not the source offset"
    seqs = [m.seq for m in messages]
    assert seqs == sorted(set(seqs)), "stream sequences out of order"
    ids = [m.headers.get("Nats-Msg-Id", "") for m in messages]
    bad = [(i, o) for i, o in zip(ids, offsets, strict=True) if not _is_msg_id(i, o)]
    assert not bad, f"{len(bad)} Nats-Msg-Id not SOURCE_ID:OFFSET, e.g. {bad[:3]}"


def _is_msg_id(msg_id: str, offset: int) -> bool:
    """Whether `msg_id` is SOURCE_ID:OFFSET, with 16 hex digits of a source id."""
    source, _, at = msg_id.partition(":")
    return re.fullmatch("[0-9a-f]{16}", source) is not None and at == str(offset)


def line_offsets(data: bytes, start: int = 0) -> list[int]:
    """The offset after each newline-terminated line of `data`, counting from `start`."""
    found = []
    at = data.find(b"\n")
    while at != -1:
        found.append(start + at + 1)
        at = data.find(b"\n", at + 1)
    return found


def last_offset(cluster: Cluster, stream: str, subject: str) -> int | None:
    """The `Shovel-Offset` of the last message on `subject`; None when it has none."""

    async def ask() -> int | None:
        nc = await cluster.connect()
        try:
            try:
                msg = await nc.jetstream().get_last_msg(stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            assert msg.headers is not None, msg
            return int(msg.headers["Shovel-Offset"])
        finally:
            await nc.close()

    return asyncio.run(ask())


def wait_for_forgotten_ids(cluster: Cluster, subject: str) -> None:
    """Waits until the server has forgotten every message id it was sent up to now: an id
    published now to `subject` (a subject of the stream that nothing else uses) is published
    again until the stream no longer takes it for a duplicate. The stream's duplicate window
    decides how long that takes, on the server's clock; the ids sent before are older, so
    forgotten too."""

    async def probe() -> None:
        nc = await cluster.connect()
        try:
            js = nc.jetstream()
            headers = {"Nats-Msg-Id": f"probe-{time.time_ns()}"}
            assert not (await js.publish(subject, b"", headers=headers)).duplicate
            deadline = time.monotonic() + WAIT_S
            while (await js.publish(subject, b"", headers=headers)).duplicate:
                assert time.monotonic() < deadline, "the server never forgot a message id"
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    asyncio.run(probe())
