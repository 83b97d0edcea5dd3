"""The reader task under cancellation: nothing consumed from a stream is dropped."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shovel.batches import Batch, BatchQueue, Rejected
from shovel.pipeline import ReadTally, run_reader
from shovel.rejects import RejectWriter, rejected_path
from shovel.sources import StreamSource


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
    stored = b"".join(b.data for b in batches)
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
