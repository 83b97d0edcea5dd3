"""The asyncio front of the native client, in-process: writes, durability, backpressure, close
and reopen, and the errors each one gives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shovel.batches import Batch
from shovel.storage import (
    ClientClosedError,
    CloseTimeoutError,
    CorruptStoreError,
    DirectoryLockedError,
    Storage,
    StorageConfig,
    StorageIOError,
)
from tests.helpers import read_checkpoint, stored_bytes


def config(out: Path, **overrides: int) -> StorageConfig:
    values = {
        "segment_max_bytes": 1 << 20,
        "fsync_interval_ms": 5,
        "fsync_max_bytes": 256 << 10,
        "max_inflight_bytes": 1 << 20,
    }
    values.update(overrides)
    return StorageConfig(directory=out, **values)


def batches(n: int, per: int = 50) -> list[Batch]:
    out, offset = [], 0
    for b in range(n):
        data = b"".join(b"batch %d record %d\n" % (b, r) for r in range(per))
        offset += len(data)
        out.append(Batch(data, per, offset))
    return out


def test_every_acknowledged_byte_is_on_disk_after_close(tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = batches(1000)

    async def run() -> None:
        storage = await Storage.open(config(out))
        seqs = [await storage.write(b) for b in items]
        await asyncio.wait_for(storage.durable(seqs[500]), 30)
        report = await storage.close(30)
        assert report.records_durable == 50_000
        assert report.committed_offset == items[-1].end_offset
        assert storage.stats().inflight_writes == 0

    asyncio.run(run())
    assert stored_bytes(out) == b"".join(bytes(b.data) for b in items)


def test_cancelling_the_wait_never_cancels_the_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    item = batches(1)[0]

    async def run() -> None:
        storage = await Storage.open(config(out, fsync_interval_ms=60_000, fsync_max_bytes=1 << 30))
        seq = await storage.write(item)
        waiter = asyncio.create_task(storage.durable(seq))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert storage.stats().inflight_writes == 1
        await storage.close(30)

    asyncio.run(run())
    assert stored_bytes(out) == item.data


def test_backpressure_waits_instead_of_failing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = batches(400, per=100)

    async def run() -> int:
        storage = await Storage.open(config(out, max_inflight_bytes=8192))
        peak = 0
        for b in items:
            await storage.write(b)
            peak = max(peak, storage.stats().inflight_bytes)
        await storage.close(30)
        return peak

    peak = asyncio.run(run())
    assert peak <= 8192 + max(len(b.data) for b in items)
    assert stored_bytes(out) == b"".join(bytes(b.data) for b in items)


def test_close_twice_and_concurrently_gives_one_outcome_and_refuses_writes(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        storage = await Storage.open(config(tmp_path / "out"))
        await storage.write(batches(1)[0])
        a, b = await asyncio.gather(storage.close(30), storage.close(30))
        c = await storage.close(30)
        assert a.committed_offset == b.committed_offset == c.committed_offset > 0
        with pytest.raises(ClientClosedError):
            await storage.write(batches(2)[1])

    asyncio.run(run())


def test_second_client_on_a_directory_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        first = await Storage.open(config(tmp_path))
        with pytest.raises(DirectoryLockedError, match=r"^in use by another shovel process"):
            await Storage.open(config(tmp_path))
        await first.close(5)
        second = await Storage.open(config(tmp_path))
        await second.close(5)

    asyncio.run(run())


def test_failing_checkpoint_is_raised_by_close(tmp_path: Path) -> None:
    async def run() -> None:
        storage = await Storage.open(config(tmp_path))
        (tmp_path / "checkpoint.tmp").mkdir()
        seq = await storage.write(batches(1)[0])
        with pytest.raises(StorageIOError) as err:
            await storage.durable(seq)
        assert err.value.errno == 21
        assert "checkpoint.tmp" in str(err.value)
        with pytest.raises(StorageIOError):
            await storage.close(5)

    asyncio.run(run())
    cp = read_checkpoint(tmp_path)
    assert cp is not None
    assert cp.committed_offset == 0


def test_close_timeout_reports_what_is_not_durable(tmp_path: Path) -> None:
    async def run() -> None:
        storage = await Storage.open(
            config(tmp_path, max_inflight_bytes=1 << 30, fsync_interval_ms=60_000)
        )
        # Far more than can be written and fsynced in no time at all.
        for b in batches(2000, per=200):
            await storage.write(b)
        with pytest.raises(CloseTimeoutError) as err:
            await storage.close(0)
        assert err.value.records_not_durable > 0
        assert err.value.bytes_not_durable > 0
        assert f"{err.value.records_not_durable} records" in str(err.value)

    asyncio.run(run())
    # What the checkpoint committed is exactly what is on disk after recovery.
    cp = read_checkpoint(tmp_path)
    assert cp is not None

    async def reopen() -> int:
        storage = await Storage.open(config(tmp_path))
        await storage.close(5)
        return storage.committed_offset

    assert asyncio.run(reopen()) == cp.committed_offset
    assert len(stored_bytes(tmp_path)) == cp.bytes


def test_damaged_checkpoint_is_refused_with_its_path(tmp_path: Path) -> None:
    async def run() -> None:
        storage = await Storage.open(config(tmp_path))
        await storage.close(5)
        (tmp_path / "checkpoint").write_bytes(b"\x00garbage")
        with pytest.raises(CorruptStoreError, match="checkpoint"):
            await Storage.open(config(tmp_path))

    asyncio.run(run())


def test_reopen_after_a_close_timeout_waits_for_the_abandoned_work(tmp_path: Path) -> None:
    """Work left running by a timed-out close keeps the directory locked until it ends, so a
    new client never recovers underneath it."""
    items = batches(3000, per=200)

    async def run() -> None:
        storage = await Storage.open(
            config(tmp_path, max_inflight_bytes=1 << 30, fsync_max_bytes=1 << 30)
        )
        for b in items:
            await storage.write(b)
        with pytest.raises(CloseTimeoutError):
            await storage.close(0)

    asyncio.run(run())

    async def reopen() -> Storage:
        while True:
            try:
                return await Storage.open(config(tmp_path))
            except DirectoryLockedError:
                await asyncio.sleep(0.01)

    async def check() -> None:
        for _ in range(2):
            storage = await asyncio.wait_for(reopen(), 60)
            await storage.close(30)
            cp = read_checkpoint(tmp_path)
            assert cp is not None
            everything = b"".join(bytes(b.data) for b in items)
            assert stored_bytes(tmp_path) == everything[: cp.committed_offset]

    asyncio.run(check())
