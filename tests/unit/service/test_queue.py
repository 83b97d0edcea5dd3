"""The reader-to-storage queue: bounded, closable, and lossless under cancellation."""

from __future__ import annotations

import asyncio

import pytest

from shovel.batches import Batch
from shovel.service.queue import BatchQueue


def batch(i: int) -> Batch:
    return Batch(b"x%d\n" % i, 1, i + 1)


def test_close_ends_getters_after_the_queued_batches() -> None:
    async def run() -> list[Batch | None]:
        q = BatchQueue(4)
        await q.put(batch(0))
        await q.put(batch(1))
        q.close()
        return [await q.get(), await q.get(), await q.get(), await q.get()]

    assert asyncio.run(run()) == [batch(0), batch(1), None, None]


def test_close_wakes_a_waiting_getter() -> None:
    async def run() -> Batch | None:
        q = BatchQueue(1)
        getter = asyncio.create_task(q.get())
        await asyncio.sleep(0)
        q.close()
        return await asyncio.wait_for(getter, 5)

    assert asyncio.run(run()) is None


def test_put_cancelled_on_a_full_queue_spills_the_batch_last() -> None:
    async def run() -> list[Batch | None]:
        q = BatchQueue(1)
        await q.put(batch(0))
        putter = asyncio.create_task(q.put(batch(1)))
        await asyncio.sleep(0)
        assert not putter.done()
        putter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await putter
        assert (q.records, q.batches) == (2, 2)
        q.close()
        got = [await q.get(), await q.get(), await q.get()]
        assert (q.records, q.batches) == (0, 0)
        return got

    assert asyncio.run(run()) == [batch(0), batch(1), None]


def test_put_after_close_is_a_bug() -> None:
    async def run() -> None:
        q = BatchQueue(1)
        q.close()
        await q.put(batch(0))

    with pytest.raises(RuntimeError):
        asyncio.run(run())
