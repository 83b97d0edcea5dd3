"""The two tasks of the pipeline and what they count.

The reader takes batches from the source and queues them; the storage task takes them off the
queue and hands them to storage. Neither decides when to stop: the runner cancels the reader,
closes the queue, and lets the storage task drain it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass

from shovel.batches import Batch, Piece, Rejected
from shovel.service.queue import BatchQueue
from shovel.sources import Source
from shovel.storage import Store, WatchesFailure
from shovel.storage.rejects import RejectWriter

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
    # The rejected piece being written when the stop came: consumed, so it is finished first.
    unfinished: tuple[Rejected, asyncio.Future[None]] | None = None
    failed = False
    try:
        async with aclosing(source.pieces(start_offset)) as pieces:
            async for piece in pieces:
                if isinstance(piece, Rejected):
                    writing = asyncio.ensure_future(rejects.write(piece))
                    try:
                        # Shielded: the piece is consumed from the source, so a stop lets it
                        # finish and the rejected file and the splitter's offsets stay in step.
                        await asyncio.shield(writing)
                    except asyncio.CancelledError:
                        unfinished = piece, writing
                        raise
                    except OSError as e:
                        _not_kept(tally, piece.offset, e)
                        # Stop reading; what is queued is still drained and stored, and so
                        # is what a stream had consumed past this line.
                        failed = True
                        break
                    continue
                tally.records += piece.records
                tally.bytes += len(piece.data)
                await queue.put(piece)
        if failed:
            await _keep_tail(source, queue, tally, rejects, None)
    except asyncio.CancelledError:
        await _keep_tail(source, queue, tally, rejects, unfinished)
        raise
    finally:
        rejects.close()


async def _keep_tail(
    source: Source,
    queue: BatchQueue,
    tally: ReadTally,
    rejects: RejectWriter,
    unfinished: tuple[Rejected, asyncio.Future[None]] | None,
) -> None:
    """Keeps what a stopped source had consumed but not yet handed over: the rejected piece
    being written, then what a non-replayable source cut from consumed bytes. Rejected pieces
    are written in source order, off the event loop. Cancelled again (a second signal, the
    deadline), it waits no more: what is left is spilled or counted as not kept, at once."""
    rest = deque(source.stop_tail())
    try:
        if unfinished is not None:
            being_written, writing = unfinished
            try:
                await writing
            except OSError as e:
                # Not raised from here: the stop goes on, keeping the rest and draining.
                _not_kept(tally, being_written.offset, e)
        while rest:
            piece = rest.popleft()
            if isinstance(piece, Rejected):
                try:
                    await rejects.write(piece)
                except OSError as e:
                    # Raised once per line: its later pieces are ignored by the writer.
                    _not_kept(tally, piece.offset, e)
                continue
            tally.records += piece.records
            tally.bytes += len(piece.data)
            queue.spill(piece)
    except asyncio.CancelledError:
        _give_up(rest, queue, tally, rejects)
        raise


def _not_kept(tally: ReadTally, offset: int, e: OSError) -> None:
    """Counts a rejected line whose write failed; the first failure is the run's fatal error."""
    why = f"keeping the line at source offset {offset} in rejected/ failed: {e.strerror or e}"
    tally.unkept += 1
    tally.error = tally.error or why
    log.error("%s", why)


def _give_up(
    rest: deque[Piece], queue: BatchQueue, tally: ReadTally, rejects: RejectWriter
) -> None:
    """For a stop that cannot wait: spills the batches left and counts the rejected lines left
    (and the one being written) as not kept."""
    lines = [] if (offset := rejects.give_up()) is None else [offset]
    for piece in rest:
        if isinstance(piece, Rejected):
            if piece.first:
                lines.append(piece.offset)
            continue
        tally.records += piece.records
        tally.bytes += len(piece.data)
        queue.spill(piece)
    for offset in lines:
        tally.unkept += 1
        log.error(
            "gave up keeping the line at source offset %d in rejected/: the stop did not wait "
            "for its write",
            offset,
        )


async def run_storage(queue: BatchQueue, storage: Store) -> int:
    """Hands every queued batch to storage until the queue is closed and empty. Returns the
    number of batches handed over. Storage that can fail with nothing handed to it is
    watched meanwhile: its error ends the task at once, as a write's would."""
    handed = 0
    if not isinstance(storage, WatchesFailure):
        while (batch := await queue.get()) is not None:
            await storage.write(batch)
            handed += 1
        return handed
    failing = asyncio.ensure_future(storage.failed())
    getting: asyncio.Future[Batch | None] | None = None
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            await asyncio.wait({getting, failing}, return_when=asyncio.FIRST_COMPLETED)
            if failing.done():
                failing.result()
            batch = await getting
            if batch is None:
                return handed
            await storage.write(batch)
            handed += 1
    finally:
        failing.cancel()
        if getting is not None:
            getting.cancel()
