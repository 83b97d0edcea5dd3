"""The native NATS source driven from Python against a real nats-server, with no Python source
around it: opened, read into `Records` that the storage client takes over, made durable,
acknowledged and stopped; what is stored, the descriptors and the stop's report checked; then
a second run restores from the checkpoint and the stop's record."""

from __future__ import annotations

import asyncio
import select
import time
from pathlib import Path

from shovel import _native
from shovel.sources.identity import NatsOrigin, decode, encode
from tests.helpers import WAIT_S
from tests.helpers.natsservers import (
    StoredMessage,
    create_stream,
    msg_id,
    payload,
    publish,
    running_cluster,
    stored_messages,
)

COUNT = 300


def native_source(url: str, out: Path) -> _native.NatsSource:
    """Stream S through consumer c, 50 messages a request, stops recorded in `out`."""
    return _native.NatsSource(
        servers=[url],
        stream="S",
        consumer="c",
        subject=None,
        batch=50,
        ack_wait_s=30.0,
        max_ack_pending=1000,
        max_unacked=400,
        shutdown_timeout_s=10.0,
        output_dir=out,
        connect_timeout_s=WAIT_S,
    )


def wait_for_news(source: _native.NatsSource) -> None:
    select.select([source.notify_fd()], [], [], 0.5)
    source.drain_notifications()


def test_a_native_source_reads_stores_and_acknowledges_every_message(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", 1))
        asyncio.run(publish(cluster, "S", 1, COUNT))
        out = tmp_path / "out"
        store = _native.StorageClient(
            out,
            segment_max_bytes=1 << 20,
            fsync_interval_ms=5,
            fsync_max_bytes=1 << 20,
            max_inflight_bytes=1 << 24,
        )
        source = native_source(cluster.servers[0].url, out)
        assert source.restore(0) == (0, False, None)
        source.start_open()
        deadline = time.monotonic() + WAIT_S
        while (phrase := source.open_result()) is None:
            assert time.monotonic() < deadline, source.take_events()
            wait_for_news(source)
        assert phrase == f"consumer c: ack_wait 30s, max_ack_pending 1000, {COUNT} messages pending"
        source.start_reading(0)

        # Read, store, and tell the source what is durable, as the pipeline will.
        records = 0
        writes: list[tuple[int, int]] = []  # (write's sequence, records up to it)
        descriptors: list[str] = []
        while records < COUNT or store.durable_seq < writes[-1][0]:
            assert time.monotonic() < deadline, (records, source.take_events())
            batch = source.take_batch()
            if batch is None:
                wait_for_news(source)
            else:
                data, count, end_offset, descriptor = batch
                seq = store.submit(data, count, end_offset, descriptor)
                assert seq is not None
                records += count
                writes.append((seq, records))
                descriptors.append(descriptor)
            durable = [n for seq, n in writes if seq <= store.durable_seq]
            if durable:
                source.made_durable(durable[-1])
        assert records == COUNT
        while source.stats().acked < COUNT:
            assert time.monotonic() < deadline, source.stats()
            time.sleep(0.05)
        assert source.take_tail() == []

        report = source.finish(records, 5.0)
        assert report is not None
        assert (report.connected, report.acked, report.not_confirmed) == (True, COUNT, 0)
        assert (report.given_back, report.due_back, report.stop_record_error) == (0, 0, None)
        assert 0 < report.took_s < 5
        assert source.finish(records, 5.0) is None
        stats = source.stats()
        assert (stats.fetched, stats.acked, stats.redelivered, stats.skipped) == (
            COUNT,
            COUNT,
            0,
            0,
        )
        assert stats.ack_latency_count == COUNT
        assert stats.ack_latency_buckets[-1] == COUNT
        assert not [line for line in source.take_events() if line[0] >= 30]
        store.close(10.0)

        # The next run restores the checkpoint's listing and learns from the stop's record
        # that none of it awaits acknowledgement any more; it binds the same consumer.
        checkpoint = _native.read_checkpoint(out)
        assert checkpoint is not None
        origin = decode(checkpoint.source)
        assert isinstance(origin, NatsOrigin)
        again = native_source(cluster.servers[0].url, out)
        restored = again.restore(
            checkpoint.committed_offset,
            stored=origin.stored,
            acked=origin.acked,
            created=origin.created,
            consumer_created=origin.consumer_created,
        )
        assert restored == (0, True, None)
        again.start_open()
        while (phrase := again.open_result()) is None:
            assert time.monotonic() < deadline, again.take_events()
            wait_for_news(again)
        assert phrase == "consumer c: ack_wait 30s, max_ack_pending 1000, 0 messages pending"
        again.close(2.0)
        assert again.finish(0, 1.0) is None

    # The descriptors are the Python source's, byte for byte.
    for descriptor in descriptors:
        origin = decode(descriptor)
        assert isinstance(origin, NatsOrigin)
        assert (origin.stream, origin.consumer) == ("S", "c")
        assert encode(origin) == descriptor
    # Every message stored once, as the Python source stored it.
    assert stored_messages(out) == [
        StoredMessage(i, "S.orders", msg_id(i), payload(i)) for i in range(1, COUNT + 1)
    ]
