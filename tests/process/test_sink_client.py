"""The JetStream sink's asyncio front against a real server: a cancelled wait abandons the
wait and never the publish, and a close past its deadline says what the stream has not
acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shovel.batches import Batch
from shovel.storage import CloseTimeoutError
from shovel.storage.natsink import SinkStore
from shovel.storage.sinkurl import parse_sink
from tests.helpers.natsink import make_stream, read_subject
from tests.helpers.natsservers import Cluster, running_cluster

STREAM = "OUT"
SUBJECT = "OUT.records"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, 1) as cluster:
        yield cluster


async def _open(cluster: Cluster) -> SinkStore:
    spec = parse_sink(f"nats://{cluster.urls}/{STREAM}?subject={SUBJECT}&batch=10")
    return await SinkStore.open(
        spec, connect_timeout_s=10.0, max_inflight_bytes=1 << 20, offset_unit="records"
    )


def _batch(first: int, count: int) -> Batch:
    lines = b"".join(b"record %d\n" % i for i in range(first, first + count))
    return Batch(lines, count, first + count, '{"kind":"test"}' if first == 0 else None)


def test_a_cancelled_wait_abandons_the_wait_not_the_publish(server: Cluster) -> None:
    async def run() -> int:
        await make_stream(server, STREAM)
        sink = await _open(server)
        for first in range(0, 100, 25):
            await sink.write(_batch(first, 25))
        waiting = asyncio.ensure_future(sink.flushed())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        closed = await sink.close(30.0)
        assert closed.committed_offset == 100
        return sink.stats().records_durable

    assert asyncio.run(run()) == 100
    got = [m.data for m in read_subject(server, STREAM, SUBJECT)]
    assert got == [b"record %d" % i for i in range(100)]


def test_a_close_past_its_deadline_says_what_was_not_acknowledged(server: Cluster) -> None:
    process = server.servers[0].proc
    assert process is not None

    async def run() -> int:
        await make_stream(server, STREAM)
        sink = await _open(server)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            await sink.write(_batch(0, 30))
            with pytest.raises(CloseTimeoutError, match="30 records") as timed_out:
                await sink.close(0.5)
            return int(timed_out.value.records_not_durable)
        finally:
            os.kill(process.pid, signal.SIGCONT)

    assert asyncio.run(run()) == 30
