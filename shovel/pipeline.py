"""The two tasks of the pipeline and what they count.

The reader takes batches from the source and queues them; the storage task takes them off the
queue and hands them to storage. Neither decides when to stop: the runner cancels the reader,
closes the queue, and lets the storage task drain it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass

from shovel.batches import BatchQueue, Rejected
from shovel.rejects import RejectWriter
from shovel.sources import Source
from shovel.storage import Storage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ReadTally:
    """Records and bytes read from the source in this run (read = taken into the pipeline)."""

    records: int = 0
    bytes: int = 0
    # Over-long lines that could not be kept in rejected/ (they count as undelivered).
    unkept: int = 0
    # Why reading stopped early, if it did (a fatal condition reported after the drain).
    error: str | None = None


async def run_reader(
    source: Source, start_offset: int, queue: BatchQueue, tally: ReadTally, rejects: RejectWriter
) -> None:
    """Reads the source from `start_offset` into `queue` until the source ends or the task is
    cancelled. A batch held at cancellation is spilled into the queue, never dropped. Lines
    over the record limit go to `rejects`, durably, before anything after them is queued."""
    try:
        async with aclosing(source.pieces(start_offset)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Rejected):
                    if not await _keep_rejected(piece, rejects, tally):
                        # Stop reading; what is queued is still drained and stored.
                        return
                    continue
                tally.records += piece.records
                tally.bytes += len(piece.data)
                await queue.put(piece)
    except asyncio.CancelledError:
        _keep_tail(source, queue, tally, rejects)
        raise
    finally:
        rejects.close()


async def _keep_rejected(piece: Rejected, rejects: RejectWriter, tally: ReadTally) -> bool:
    """Writes a piece of an over-long line; False (and `tally.error` set) if that failed."""
    # The piece is consumed from the source: finish writing it even if the reader is being
    # cancelled, so the rejected file and the splitter's offsets stay in step.
    writing = asyncio.ensure_future(rejects.write(piece))
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        await writing
        raise
    except OSError as e:
        tally.unkept += 1
        tally.error = f"keeping the line at source offset {piece.offset} in rejected/ failed: {e}"
        log.error("%s", tally.error)
        return False
    return True


def _keep_tail(source: Source, queue: BatchQueue, tally: ReadTally, rejects: RejectWriter) -> None:
    """Keeps what a stopped, non-replayable source had consumed but not yet handed over."""
    for piece in source.stop_tail():
        if isinstance(piece, Rejected):
            try:
                rejects.write_now(piece)
            except (OSError, RuntimeError) as e:
                if piece.last:
                    tally.unkept += 1
                log.error("a rejected line at source offset %d was not kept: %s", piece.offset, e)
            continue
        tally.records += piece.records
        tally.bytes += len(piece.data)
        queue.spill(piece)


async def run_storage(queue: BatchQueue, storage: Storage) -> int:
    """Hands every queued batch to storage until the queue is closed and empty. Returns the
    number of batches handed over."""
    handed = 0
    while (batch := await queue.get()) is not None:
        await storage.write(batch)
        handed += 1
    return handed
