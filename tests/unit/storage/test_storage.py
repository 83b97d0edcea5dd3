"""The asyncio front of the native client, and the client's lifecycle in real processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
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
from tests.helpers import assert_clean_stderr, read_checkpoint, stored_bytes


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
        with pytest.raises(DirectoryLockedError, match=str(tmp_path)):
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


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


UNCLOSED = """
    import asyncio, sys
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    async def main():
        s = await Storage.open(StorageConfig(Path("out"), 1 << 20, 50, 1 << 20, 1 << 24))
        data = b"".join(b"r%d\\n" % i for i in range(1000))
        for i in range(200):
            await s.write(Batch(data, 1000, (i + 1) * len(data)))
        # Returns with writes in flight and without closing.
    asyncio.run(main())
"""


@pytest.mark.parametrize("iteration", range(5))
def test_exit_without_close_flushes_at_exit_with_a_warning(tmp_path: Path, iteration: int) -> None:
    result = run_script(UNCLOSED, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" in result.stderr
    assert "was not closed" in result.stderr
    assert_clean_stderr(result.stderr)
    data = b"".join(b"r%d\n" % i for i in range(1000))
    assert stored_bytes(tmp_path / "out") == data * 200
    cp = read_checkpoint(tmp_path / "out")
    assert cp is not None
    assert cp.committed_offset == 200 * len(data)


SPAWN_CHILD = """
    import asyncio, multiprocessing
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    def child(out):
        async def main():
            s = await Storage.open(StorageConfig(Path(out), 1 << 20, 5, 1 << 20, 1 << 24))
            await s.write(Batch(b"from the child\\n", 1, 15))
            await s.close(10)
        asyncio.run(main())

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        p = ctx.Process(target=child, args=("out",))
        p.start()
        p.join(60)
        raise SystemExit(p.exitcode)
"""


def test_a_spawned_child_writes_and_closes(tmp_path: Path) -> None:
    script = tmp_path / "spawn_child.py"
    script.write_text(textwrap.dedent(SPAWN_CHILD))
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert_clean_stderr(result.stderr)
    assert stored_bytes(tmp_path / "out") == b"from the child\n"


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


FORK_CHILD = """
    import asyncio, os, sys
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    async def main():
        return await Storage.open(StorageConfig(Path("out"), 1 << 20, 5, 1 << 20, 1 << 24))

    storage = asyncio.run(main())
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child runs the exit hooks: they must leave the parent's client alone
    _, status = os.waitpid(pid, 0)
    asyncio.run(storage.close(5))
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_exits_without_touching_the_parents_client(tmp_path: Path) -> None:
    result = run_script(FORK_CHILD, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "fork()" not in result.stderr, result.stderr
