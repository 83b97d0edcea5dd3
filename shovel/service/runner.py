"""The service's run, and its ordered stop: the one place where the stop sequence is read top
to bottom (docs/stopping.md tells it for users).

The reader and storage tasks, and a third that acknowledges what is durable to a source that
must be told, are the only children of one TaskGroup, and the only tasks this module ever
cancels. A stop signal only sets an event (signals.py); a second one, or the deadline
(--shutdown-timeout-s from the first signal), cuts the waiting short, never the close of
storage, so that what is durable is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from shovel.exitcodes import ExitCode
from shovel.service import reports
from shovel.service.laststop import StopReport
from shovel.service.pipeline import run_reader, run_storage
from shovel.service.queue import BatchQueue
from shovel.service.signals import StopRequest
from shovel.service.startup import OpenSource, Run, open_run, source_for
from shovel.service.state import StatusLines
from shovel.service.waits import until
from shovel.settings import Settings
from shovel.sources import SourceError
from shovel.storage import CloseTimeoutError, OpenStorage, Storage, StorageError

# The service speaks as "shovel" (startup, reports and status lines too).
log = logging.getLogger("shovel")

# The least time the source's finish (its last acknowledgements, its disconnection) gets, even
# past the deadline: it comes out of the margin before the orchestrator's kill.
FINISH_LEAST_S = 1.0


async def run_service(
    settings: Settings,
    *,
    open_source: OpenSource = source_for,
    open_storage: OpenStorage = Storage.open,
) -> int:
    """Runs shovel until stopped or the source ends; returns the exit code. `open_source` and
    `open_storage` say how to open what the run works on (the demonstration and the classic
    benchmark pass their own)."""
    stop = StopRequest()
    stop.attach(asyncio.get_running_loop())
    try:
        with contextlib.ExitStack() as cleanup:
            run = await open_run(settings, stop, cleanup, open_source, open_storage)
            if isinstance(run, ExitCode):
                return run
            if settings.status_interval_s > 0:
                cleanup.callback(StatusLines(run.state, settings.status_interval_s).cancel)
            return await _run_and_stop(run)
    finally:
        stop.detach()


async def _run_and_stop(run: Run) -> ExitCode:
    """Runs the pipeline until a stop signal or the end of the source, then stops it, step by
    step; returns the exit code."""
    settings, stop, source, storage, state = (
        run.settings,
        run.stop,
        run.source,
        run.storage,
        run.state,
    )
    deadline = _Deadline(settings.shutdown_timeout_s, stop)
    queue = state.queue = BatchQueue(settings.queue_max_batches)
    try:
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(
                run_reader(source, storage.committed_offset, queue, state.tally, state.rejects),
                name="shovel-reader",
            )
            writer = tg.create_task(run_storage(queue, storage), name="shovel-storage")
            acker = tg.create_task(
                source.acknowledge(lambda: storage.stats().records_durable), name="shovel-acks"
            )

            # 1. Wait for a stop signal or the end of the source. A signal starts the deadline;
            #    the end of the source starts none: nothing is in a hurry until a signal comes.
            await until(stop.stop, reader)
            _stopping(run)
            if stop.requested:
                deadline.start()
                log.info(
                    "%s received: stopping (deadline %.1fs)",
                    stop.first_signal,
                    settings.shutdown_timeout_s,
                )
            else:
                log.info("end of source reached: storing what was read")

            # 2. Stop the reader: no new data enters. What it held is spilled into the queue.
            #    A read stuck on a hung filesystem is abandoned at the deadline (its daemon
            #    thread holds up nothing).
            phase = _Phase("stop reader")
            reader.cancel()
            if not await deadline.wait(stop.hurry, reader):
                log.warning("the reader did not stop in time; abandoning its pending read")
                reader.cancel()
                await asyncio.wait({reader})
            queue.close()
            phase.done(f"{state.tally.records} records read, {queue.records} queued")

            # 3. Drain the queue into storage, until a second signal or the deadline.
            phase = _Phase("drain queue")
            queued = queue.batches
            if not deadline.started:
                await until(stop.stop, writer)
                if not writer.done():
                    deadline.start_late()
            if await deadline.wait(stop.hurry, writer):
                phase.done(
                    f"{queued} batches in the queue handed to storage "
                    f"({writer.result()} in the whole run)"
                )
            else:
                why = "a second signal" if stop.hurry.is_set() else "the deadline"
                log.warning(
                    "stopped draining because of %s: %d records in %d batches left in the queue",
                    why,
                    queue.records,
                    queue.batches,
                )
                writer.cancel()
                await asyncio.wait({writer})
                phase.done("interrupted")

            # 4. Stop acknowledging: the last acknowledgements follow the close (step 7).
            acker.cancel()
    except* StorageError as group:
        state.fail(f"storage failed: {group.exceptions[0]}")
    except* SourceError as group:
        state.fail(f"source failed: {group.exceptions[0]}")
    except* OSError as group:
        state.fail(f"reading the source failed: {group.exceptions[0]}")
    except* Exception as group:
        # A bug, not an operating condition: keep the traceback, still close and commit.
        log.error("unexpected error", exc_info=group.exceptions[0])
        state.fail(f"unexpected error: {group.exceptions[0]!r}")

    # 5. The source ended by itself: wait until everything handed over is durable, unless a
    #    stop signal comes first. Then (or after a failure) the close gets the usual budget.
    if not deadline.started and state.fatal is None:
        phase = _Phase("flush")
        if await _flushed_unless_stopped(run):
            phase.done()
        else:
            deadline.start_late()
            phase.done("cut short by a stop signal")
    if not deadline.started:
        deadline.start()
    _stopping(run)

    # 6. Close storage: every accepted write written and fsynced, the checkpoint replaced,
    #    within what is left of the deadline.
    phase = _Phase("close storage")
    try:
        closed = await storage.close(deadline.left())
        phase.done(f"committed offset {closed.committed_offset}")
    except CloseTimeoutError as e:
        state.close_timed_out = True
        phase.done(str(e))
    except StorageError as e:
        state.fail(f"storage failed: {e}")
        phase.done(f"failed: {e}")

    # 7. Only now is everything drained fsynced: the source's last acknowledgements, and its
    #    disconnection (nothing for a file).
    phase = _Phase("finish source")
    try:
        await source.finish(storage.stats().records_durable, max(deadline.left(), FINISH_LEAST_S))
        phase.done()
    except Exception as e:
        # A bug, not an operating condition: the summary and the report still follow.
        log.error("unexpected error while finishing the source", exc_info=e)
        state.fail(f"unexpected error while finishing the source: {e!r}")
        phase.done("failed")

    # 8. Account for the run: the summary line, the metrics, the exit code, the stop report.
    return await _account(run)


class _Phase:
    """A timed step of the stop sequence: one log line with its duration."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()

    def done(self, detail: str = "") -> None:
        """Logs the phase with its duration."""
        took = time.monotonic() - self.started
        suffix = f": {detail}" if detail else ""
        log.info("stop phase '%s' took %.3fs%s", self.name, took, suffix)


class _Deadline:
    """When the stop must be over: --shutdown-timeout-s after the first signal (or after the
    end of the source was stored); not started while nothing is in a hurry."""

    def __init__(self, budget_s: float, stop: StopRequest) -> None:
        self._budget_s = budget_s
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        self._at: float | None = None

    @property
    def started(self) -> bool:
        """Whether the stop has a deadline."""
        return self._at is not None

    def start(self) -> None:
        """The stop must be over within the budget from now."""
        self._at = self._loop.time() + self._budget_s

    def start_late(self) -> None:
        """A stop signal came while the end of the source was being stored: the rest gets the
        usual budget from now."""
        log.info(
            "%s received while storing the end of the source: the rest has %.1fs",
            self._stop.first_signal,
            self._budget_s,
        )
        self.start()

    def left(self) -> float:
        """Seconds left (the whole budget before it starts)."""
        return self._budget_s if self._at is None else max(self._at - self._loop.time(), 0.0)

    async def wait(self, hurry: asyncio.Event, task: asyncio.Task[Any]) -> bool:
        """Waits until `task` is done, `hurry` is set, or the deadline passes; returns whether
        `task` is done. The task itself is never cancelled here."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._at):
                await until(hurry, task)
        return task.done()


def _stopping(run: Run) -> None:
    """Marks the stop as begun (once): /readyz turns 503, the shutdown gauge goes to 1."""
    if run.state.stop_started is None:
        run.state.stop_started = time.monotonic()
        run.metrics.ready = False
        run.metrics.shutdown_in_progress.set(1)


async def _flushed_unless_stopped(run: Run) -> bool:
    """Waits until storage made everything handed over durable, or a stop signal came; returns
    whether everything is durable. A storage error here is raised again by the close."""
    flushed = asyncio.ensure_future(run.storage.flushed())
    try:
        await until(run.stop.stop, flushed)
    finally:
        finished = flushed.done()
        flushed.cancel()
    if finished:
        # Marked as seen: close() raises it again.
        flushed.exception()
    return finished


async def _account(run: Run) -> ExitCode:
    """Logs the summary, sets the stop's metrics, writes the stop report; returns the exit
    code."""
    settings, state, metrics, stop = run.settings, run.state, run.metrics, run.stop
    if state.tally.error is not None:
        state.fail(state.tally.error)
    stats = run.storage.stats()
    undelivered = max(state.tally.records - stats.records_durable, 0) + state.tally.unkept
    assert state.stop_started is not None
    took = time.monotonic() - state.stop_started
    metrics.undelivered.set(undelivered)
    metrics.shutdown_duration.set(took)
    metrics.shutdown_in_progress.set(0)
    log.info(
        "summary: read %d records (%d bytes), stored %d records (%d bytes), committed offset %d, "
        "shutdown took %.3fs, undelivered %d",
        state.tally.records,
        state.tally.bytes,
        stats.records_durable,
        stats.bytes_durable,
        stats.committed_offset,
        took,
        undelivered,
    )
    code = _exit_code(run, undelivered, stats.committed_offset)
    side_dir = settings.side_dir
    if side_dir is not None and side_dir.is_dir():
        reason = "fatal" if state.fatal else "signal" if stop.requested else "end of source"
        await reports.save_final(
            side_dir,
            state,
            StopReport(
                reason=reason,
                started_at=state.started_at,
                exit_code=code,
                signal=stop.first_signal if stop.requested else None,
                ended_at=time.time(),
                records_read=state.tally.records,
                records_stored=stats.records_durable,
                undelivered=undelivered,
                stop_duration_s=took,
                committed_offset=stats.committed_offset,
                detail=state.fatal,
            ),
        )
    return code


def _exit_code(run: Run, undelivered: int, committed_offset: int) -> ExitCode:
    """Logs how the run ended; returns its exit code."""
    state, settings, source = run.state, run.settings, run.source
    if state.fatal is not None:
        if settings.sink is None and not settings.output_dir.is_dir():
            state.fatal += f" (the output directory {settings.output_dir} no longer exists)"
        log.error("fatal: %s", state.fatal)
        return ExitCode.FATAL
    if undelivered or state.close_timed_out:
        log.error(
            "%d records were read but are not durable; the committed offset (%d) excludes them%s",
            undelivered,
            committed_offset,
            "; a replayable source will read them again next run"
            if source.replayable
            else "; this source cannot replay them",
        )
        return ExitCode.UNDELIVERED
    if not source.replayable:
        log.info(
            "%s: every record read is durable (a stream is never read twice: this holds for a "
            "stop by signal or end of input; a SIGKILL loses what was read but not yet "
            "committed, and nothing can count it)",
            source.description,
        )
    return ExitCode.OK
