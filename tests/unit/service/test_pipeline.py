"""The reader task under cancellation: nothing consumed from a stream is dropped, and keeping
a rejected line never blocks the event loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from shovel import safefiles
from shovel.batches import Batch, Rejected
from shovel.service.pipeline import ReadTally, run_reader
from shovel.service.queue import BatchQueue
from shovel.sources import StreamSource
from shovel.storage.rejects import RejectWriter, rejected_path
from tests.helpers import WAIT_S, wait_until
from tests.helpers.failing_writes import fail_partial_writes


async def drain(queue: BatchQueue) -> list[Batch]:
    queue.close()
    out = []
    while (b := await queue.get()) is not None:
        out.append(b)
    return out


def test_a_stream_stopped_on_a_full_queue_keeps_every_consumed_piece(tmp_path: Path) -> None:
    long_line = b"x" * 100 + b"\n"
    data = b"a\n" + long_line + b"b\n" + b"partial"
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)

    async def run() -> tuple[list[Batch], ReadTally, RejectWriter]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(1)
        await queue.put(Batch(b"already queued\n", 1, 0))
        tally = ReadTally()
        rejects = RejectWriter(tmp_path, 10)
        reader = asyncio.create_task(run_reader(source, 0, queue, tally, rejects))
        # Let the reader consume the whole chunk; it then waits for room in the queue.
        for _ in range(100_000):
            if tally.records:
                break
            await asyncio.sleep(0)
        assert tally.records == 1, "the reader should be blocked on the full queue"
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return await drain(queue), tally, rejects

    batches, tally, rejects = asyncio.run(run())
    os.close(write_fd)
    stored = b"".join(bytes(b.data) for b in batches)
    assert stored == b"already queued\na\nb\npartial\n"
    assert tally.records == 3
    assert rejects.records == 1
    assert rejected_path(tmp_path, 2).read_bytes() == long_line
    assert [b.end_offset for b in batches][-1] == len(data)


def test_a_rejected_line_is_whole_under_its_name_or_not_there(tmp_path: Path) -> None:
    async def run() -> None:
        w = RejectWriter(tmp_path, 10)
        await w.write(Rejected(5, b"y" * 50, first=True, last=False))
        # Not yet complete: only the partial name exists.
        assert not rejected_path(tmp_path, 5).exists()
        await w.write(Rejected(5, b"y" * 50 + b"\n", first=False, last=True))

    asyncio.run(run())
    assert rejected_path(tmp_path, 5).read_bytes() == b"y" * 100 + b"\n"
    assert sorted(p.name for p in (tmp_path / "rejected").iterdir()) == [f"{5:020d}.rec"]


# --- filesystem faults for rejected lines, by patching Path.open for `.partial` names --------


class BlockedOpens:
    """Opening a `.partial` file waits until `released`: a hung filesystem. `entered` is set
    once an open is waiting, `opened` once one has returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.opened = threading.Event()
        real_create = safefiles.create_file

        def create(path: Path, **options: Any) -> Any:
            assert path.name.endswith(".partial"), path
            self.entered.set()
            # Bounded, so that a failing test does not leave a thread stuck for good.
            self.released.wait(WAIT_S)
            f = real_create(path, **options)
            self.opened.set()
            return f

        monkeypatch.setattr(safefiles, "create_file", create)


# --- keeping a rejected line when the reader is stopped --------------------------------------


async def until_blocked_on_the_queue(tally: ReadTally, records: int) -> None:
    """Lets the reader run until it has read `records` and waits for room in the queue."""
    for _ in range(100_000):
        if tally.records == records:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the reader read {tally.records} records, expected {records}")


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_blocked_rejected_line_write_leaves_the_event_loop_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = BlockedOpens(monkeypatch)
    long_line = b"x" * 100 + b"\n"
    data = b"a\n" + long_line + b"b\n"
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    loop_ran: list[bool] = []

    def watchdog(loop: asyncio.AbstractEventLoop) -> None:
        # Runs while the write of the rejected line is stuck: can the loop still run a callback?
        if blocked.entered.wait(WAIT_S):
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            loop_ran.append(ran.wait(WAIT_S))
        blocked.released.set()

    async def run() -> tuple[list[Batch], ReadTally, RejectWriter]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(1)
        await queue.put(Batch(b"already queued\n", 1, 0))
        tally = ReadTally()
        rejects = RejectWriter(tmp_path, 10)
        reader = asyncio.create_task(run_reader(source, 0, queue, tally, rejects))
        await until_blocked_on_the_queue(tally, 1)
        # The rejected line is in the stream's tail: the stop writes it.
        dog = threading.Thread(target=watchdog, args=(asyncio.get_running_loop(),), daemon=True)
        dog.start()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return await drain(queue), tally, rejects

    batches, tally, rejects = asyncio.run(run())
    os.close(write_fd)
    assert loop_ran == [True], "the event loop was blocked by the rejected line's write"
    assert rejected_path(tmp_path, 2).read_bytes() == long_line
    assert (rejects.records, tally.unkept) == (1, 0)
    assert b"".join(bytes(b.data) for b in batches) == b"already queued\na\nb\n"
    assert batches[-1].end_offset == len(data)


def test_a_second_stop_gives_up_a_blocked_rejected_line_and_still_spills_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream ends mid-line at the stop: the line's first piece, then an empty last piece
    # and the batch past it. Opening its file hangs until released.
    blocked = BlockedOpens(monkeypatch)
    data = b"a\n" + b"x" * 50
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)

    async def run() -> tuple[BaseException | None, list[Batch], ReadTally, RejectWriter]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(1)
        await queue.put(Batch(b"already queued\n", 1, 0))
        tally = ReadTally()
        rejects = RejectWriter(tmp_path, 10)
        reader = asyncio.create_task(run_reader(source, 0, queue, tally, rejects))
        await until_blocked_on_the_queue(tally, 1)
        reader.cancel()
        entered = asyncio.get_running_loop().run_in_executor(None, blocked.entered.wait, WAIT_S)
        assert await entered, "the rejected line's file was never opened"
        reader.cancel()
        # Bounded: the reader must end while the open is still stuck.
        (outcome,) = await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), WAIT_S)
        assert not blocked.released.is_set()
        return outcome, await drain(queue), tally, rejects

    try:
        outcome, batches, tally, rejects = asyncio.run(run())
    finally:
        blocked.released.set()
    os.close(write_fd)
    assert isinstance(outcome, asyncio.CancelledError), f"the reader ended with {outcome!r}"
    assert (rejects.records, tally.unkept, tally.error) == (0, 1, None)
    assert b"".join(bytes(b.data) for b in batches) == b"already queued\na\n"
    assert batches[-1].end_offset == len(data)
    # Once the open returns, the file of the line given up is closed and removed.
    assert blocked.opened.wait(WAIT_S)
    rejected = tmp_path / "rejected"
    wait_until(lambda: not any(rejected.iterdir()), what=f"{rejected} to be empty")


def test_a_stopped_stream_gives_up_a_rejected_line_whose_first_piece_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream ends mid-line at the stop: the line comes as a first piece, then an empty last
    # piece from the end of input. Only the first piece's write fails.
    fail_partial_writes(monkeypatch, {1})
    data = b"a\n" + b"x" * 50
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)

    async def run() -> tuple[list[Batch], ReadTally, RejectWriter]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(1)
        await queue.put(Batch(b"already queued\n", 1, 0))
        tally = ReadTally()
        rejects = RejectWriter(tmp_path, 10)
        reader = asyncio.create_task(run_reader(source, 0, queue, tally, rejects))
        await until_blocked_on_the_queue(tally, 1)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return await drain(queue), tally, rejects

    batches, tally, rejects = asyncio.run(run())
    os.close(write_fd)
    assert sorted((tmp_path / "rejected").iterdir()) == [], "a line with a piece missing was kept"
    assert (rejects.records, tally.unkept) == (0, 1)
    partial = tmp_path / "rejected" / f"{2:020d}.rec.partial"
    assert tally.error == (
        f"keeping the line at source offset 2 in rejected/ failed: write rejected line failed "
        f"for {partial}: Read-only file system [EROFS]"
    )
    assert errors_logged(caplog) == [tally.error]
    assert b"".join(bytes(b.data) for b in batches) == b"already queued\na\n"
    assert batches[-1].end_offset == len(data)


class FailingAfterStop(RejectWriter):
    """Every write waits until `release`, then fails: a write that fails after a stop came."""

    def __init__(self, output_dir: Path) -> None:
        super().__init__(output_dir, 10)
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, piece: Rejected) -> None:
        self.writing.set()
        await self.release.wait()
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_stop_during_a_rejected_write_that_fails_still_keeps_the_tail(tmp_path: Path) -> None:
    long_line = b"x" * 100 + b"\n"
    data = b"a\n" + long_line + b"b\n" + b"partial"
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)

    async def run() -> tuple[BaseException | None, list[Batch], ReadTally]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(8)
        tally = ReadTally()
        rejects = FailingAfterStop(tmp_path)
        reader = asyncio.create_task(run_reader(source, 0, queue, tally, rejects))
        await asyncio.wait_for(rejects.writing.wait(), WAIT_S)
        reader.cancel()
        rejects.release.set()
        (outcome,) = await asyncio.gather(reader, return_exceptions=True)
        return outcome, await drain(queue), tally

    outcome, batches, tally = asyncio.run(run())
    os.close(write_fd)
    assert isinstance(outcome, asyncio.CancelledError), f"the reader ended with {outcome!r}"
    assert b"".join(bytes(b.data) for b in batches) == b"a\nb\npartial\n"
    assert batches[-1].end_offset == len(data)
    assert (tally.records, tally.unkept) == (3, 1)
    assert tally.error == (
        "keeping the line at source offset 2 in rejected/ failed: Input/output error"
    )


def test_a_failed_rejected_line_on_a_stream_still_keeps_what_was_consumed_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One chunk holds a record, an over-long line, a record and a partial line: when keeping
    # the long line fails, reading stops, but the bytes after it were consumed from a stream
    # that cannot be read again, so they are still handed over (and the failure is counted).
    fail_partial_writes(monkeypatch, {1})
    data = b"a\n" + b"x" * 50 + b"\nb\npartial"
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)

    async def run() -> tuple[list[Batch], ReadTally]:
        source = StreamSource(read_fd, "pipe", 4096, 10, owns_fd=True)
        queue = BatchQueue(8)
        tally = ReadTally()
        await run_reader(source, 0, queue, tally, RejectWriter(tmp_path, 10))
        queue.close()
        return await drain(queue), tally

    batches, tally = asyncio.run(run())
    os.close(write_fd)
    assert b"".join(bytes(b.data) for b in batches) == b"a\nb\npartial\n"
    assert batches[-1].end_offset == len(data)
    assert (tally.records, tally.unkept) == (3, 1)
    assert tally.error is not None
    assert "source offset 2" in tally.error
