"""The demo's JetStream store, against a real nats-server: the classic remote client (nats-py, a
task per record) loses exactly the records whose task a stop cancels before it publishes; a
run's stream is created for shovel's sink (allow_atomic) and read back after the run; a
read-back that cannot finish counts what it did not read as unknown, never as lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.js.client import JetStreamContext

from shovel.batches import Batch
from shovel.demo import sinkstream
from shovel.demo.accounting import HELD_FILE, Tally, tally
from shovel.demo.pyclient import OFFSET_FILE
from shovel.demo.pyremote import STORE_DIR, NatsPyStore
from shovel.demo.sinkstream import SinkStream
from shovel.storage.sinkurl import parse_sink
from tests.helpers import generated


@contextmanager
def _stream(url: str, name: str) -> Iterator[SinkStream]:
    stream = SinkStream(url, name)
    try:
        stream.start()
        yield stream
    finally:
        stream.close()


def _batch(start: int, stop: int) -> Batch:
    """The generator's records start..stop-1 as one batch."""
    return Batch(generated(start, stop), stop - start, stop)


def test_the_classic_client_stores_every_record_when_nothing_cancels_it(
    demo_nats_url: str, tmp_path: Path
) -> None:
    """close() awaits every publish: the stream holds each record once, in order, and the
    checkpoint is the end of the last batch."""

    async def run(stream: SinkStream) -> None:
        client = await NatsPyStore.open(parse_sink(stream.sink), tmp_path)
        await client.write(_batch(0, 40))
        await client.write(_batch(40, 100))
        await client.close(10.0)

    with _stream(demo_nats_url, "CLASSIC_CLEAN") as stream:
        asyncio.run(run(stream))
        held = stream.read_back(tmp_path)
    assert (held.messages, held.read_back, held.incomplete) == (100, 100, None)
    assert (tmp_path / HELD_FILE).read_bytes() == generated(0, 100)
    assert (tmp_path / STORE_DIR / OFFSET_FILE).read_text() == "100"
    assert tally(tmp_path, "nats-py", 100) == Tally(100, 100, 100, 0, 0, 0, 0)


def test_a_publish_task_cancelled_before_it_runs_never_publishes_and_close_raises(
    demo_nats_url: str, tmp_path: Path
) -> None:
    """What a stop that cancels every task does to the classic client: the tasks of the batch
    it was handed last, cancelled before their first step, publish nothing, and close()
    raises CancelledError. Those of the batch before, which had published, are stored."""

    async def run(stream: SinkStream) -> None:
        client = await NatsPyStore.open(parse_sink(stream.sink), tmp_path)
        await client.write(_batch(0, 30))
        await client.flushed()
        await client.write(_batch(30, 50))
        for task in asyncio.all_tasks():
            if task.get_name().startswith("NatsPyStore-write-"):
                task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client.close(10.0)

    with _stream(demo_nats_url, "CLASSIC_CANCELLED") as stream:
        asyncio.run(run(stream))
        held = stream.read_back(tmp_path)
    assert (held.messages, held.incomplete) == (30, None)
    t = tally(tmp_path, "nats-py", 50)
    assert (t.stored, t.lost, t.duplicated) == (30, 20, 0)


def _publish(url: str, subject: str, records: bytes) -> None:
    """Publishes each record (without its newline) as a message, as the clients do."""

    async def run() -> None:
        nc = await nats.connect(f"nats://{url}")
        try:
            js = nc.jetstream()
            for record in records.splitlines():
                await js.publish(subject, record)
        finally:
            await nc.close()

    asyncio.run(run())


def _allow_atomic(url: str, stream: str) -> bool:
    async def run() -> bool:
        nc = await nats.connect(f"nats://{url}")
        try:
            info = await nc.jetstream().stream_info(stream)
            return bool(info.config.allow_atomic)
        finally:
            await nc.close()

    return asyncio.run(run())


def test_a_runs_stream_takes_atomic_batches_and_is_read_back_whole(
    demo_nats_url: str, tmp_path: Path
) -> None:
    """Records 0..99 reached the stream, 100..119 were read and never did: lost."""
    with _stream(demo_nats_url, "READ_BACK") as stream:
        assert _allow_atomic(demo_nats_url, "READ_BACK")
        _publish(demo_nats_url, stream.subject, generated(0, 100))
        held = stream.read_back(tmp_path)
    assert (held.messages, held.read_back, held.unseen, held.incomplete) == (100, 100, 0, None)
    t = tally(tmp_path, "sink", 120, unseen=held.unseen)
    assert (t.stored, t.lost, t.uncounted) == (100, 20, 0)


def test_a_read_back_that_stalls_is_incomplete_and_what_it_did_not_read_is_unknown(
    demo_nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pull brings anything: after STALL_S the read-back gives up. Of the 120 records read,
    the 100 messages the stream holds may hold 100: those are unknown; 20 are lost whatever
    the stream holds."""
    monkeypatch.setattr(sinkstream, "STALL_S", 1.0)

    async def nothing(*_args: Any, **_kwargs: Any) -> list[Any]:
        raise nats.errors.TimeoutError

    with _stream(demo_nats_url, "STALLED") as stream:
        _publish(demo_nats_url, stream.subject, generated(0, 100))
        monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", nothing)
        held = stream.read_back(tmp_path)
    assert (held.messages, held.read_back, held.unseen) == (100, 0, 100)
    assert held.incomplete is not None
    assert "got nothing new for 1 s with 100 of its 100 messages not read" in held.incomplete
    t = tally(tmp_path, "sink", 120, unseen=held.unseen)
    assert (t.stored, t.lost, t.uncounted) == (0, 20, 100)
    # The server never said what the stream holds: nothing is known lost.
    unknown = tally(tmp_path, "sink", 120, unseen=None)
    assert (unknown.lost, unknown.uncounted) == (0, 120)
