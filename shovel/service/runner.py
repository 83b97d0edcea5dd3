"""The service's lifecycle: start, run, and the ordered stop.

Sequence (see SHUTDOWN.md): signal handlers first; open storage; resume the source at the
committed offset; run the reader and storage tasks in one TaskGroup. On the first stop signal
(or the end of a finite source): readiness goes 503, the reader is cancelled, the queue is
closed and the storage task drains it; then the client is closed (drain, fsync, checkpoint)
within what is left of --shutdown-timeout-s. A second signal, or the deadline, stops the
queue drain; the client is still closed so that what is durable is committed. Only this
module's own tasks are ever cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from shovel.batches import BatchQueue
from shovel.service.laststop import (
    REPORT_FILE,
    ReportError,
    StopReport,
    describe,
    read_report,
    running_marker,
    write_final_report,
    write_report,
)
from shovel.service.metrics import LiveState, Metrics, MetricsServer, host_port
from shovel.service.pipeline import ReadTally, run_reader, run_storage
from shovel.service.signals import StopRequest
from shovel.settings import ENV_PREFIX, Settings
from shovel.sources import (
    DaemonThreads,
    FileSource,
    Source,
    SourceError,
    SourceMismatch,
    open_source,
)
from shovel.sources.api import AcknowledgedSource
from shovel.storage import (
    CloseTimeoutError,
    CorruptStoreError,
    DirectoryLockedError,
    Storage,
    StorageError,
    storage_config,
)
from shovel.storage.rejects import REJECTED_DIR, RejectWriter, recover_rejected

log = logging.getLogger("shovel")


class ExitCode(IntEnum):
    """The process exit codes (documented in --help)."""

    OK = 0
    FATAL = 1
    USAGE = 2  # must match cli.EXIT_USAGE
    UNDELIVERED = 3


class Phase:
    """A timed step of the stop sequence: one log line with its duration."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()

    def done(self, detail: str = "") -> float:
        """Logs the phase with its duration; returns the duration."""
        took = time.monotonic() - self.started
        suffix = f": {detail}" if detail else ""
        log.info("stop phase '%s' took %.3fs%s", self.name, took, suffix)
        return took


@dataclass(slots=True)
class RunState:
    """What the run has done, for metrics, status lines and the summary."""

    rejects: RejectWriter
    source: Source | None = None
    tally: ReadTally = field(default_factory=ReadTally)
    storage: Storage | None = None
    queue: BatchQueue | None = None
    stop_started: float | None = None
    fatal: str | None = None
    close_timed_out: bool = False
    started_at: float = field(default_factory=time.time)
    # The marker this run wrote into last-stop.json at start (None if it could not).
    marker: StopReport | None = None


def _live_state(state: RunState) -> LiveState:
    st = state.storage.stats() if state.storage is not None else None
    q = state.queue
    return LiveState(
        records_read=state.tally.records,
        bytes_read=state.tally.bytes,
        queue_records=q.records if q is not None else 0,
        queue_batches=q.batches if q is not None else 0,
        inflight_writes=st.inflight_writes if st else 0,
        inflight_bytes=st.inflight_bytes if st else 0,
        inflight_records=st.inflight_records if st else 0,
        records_stored=st.records_durable if st else 0,
        bytes_stored=st.bytes_durable if st else 0,
        committed_offset=st.committed_offset if st else 0,
        fsyncs=st.fsyncs if st else 0,
        storage_errors=st.errors if st else 0,
        storage_retries=st.retries if st else 0,
        records_rejected=state.rejects.records,
        **_file_progress(state.source),
        **_nats_progress(state.source),
    )


def _file_progress(source: Source | None) -> dict[str, Any]:
    progress = source.progress if isinstance(source, FileSource) else None
    if progress is None:
        return {}
    return {
        "source_file": progress.path,
        "source_size": progress.size,
        "source_position": progress.position,
        "source_rotations": progress.rotations,
        "source_files_skipped": progress.skipped,
    }


def _nats_progress(source: Source | None) -> dict[str, Any]:
    if not isinstance(source, AcknowledgedSource):
        return {}
    return {"nats": replace(source.progress)}


async def _until(
    event: asyncio.Event, task: asyncio.Task[Any], limit_s: float | None = None
) -> None:
    """Waits until `event` is set or `task` is done (or `limit_s` passes)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _left(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    """Seconds until `deadline` (None: no deadline)."""
    return None if deadline is None else max(deadline - loop.time(), 0.0)


def _stop_arrived_late(
    loop: asyncio.AbstractEventLoop, stop: StopRequest, settings: Settings
) -> float:
    """A stop signal came after the end of the source: the rest of the drain gets the usual
    budget from now. Returns the new deadline."""
    log.info(
        "%s received while storing the end of the source: the rest has %.1fs",
        stop.first_signal,
        settings.shutdown_timeout_s,
    )
    return loop.time() + settings.shutdown_timeout_s


def _log_status(state: RunState) -> None:
    s = _live_state(state)
    log.info(
        "status: read %d records, stored %d, queued %d, in flight %d (%d bytes), "
        "committed offset %d",
        s.records_read,
        s.records_stored,
        s.queue_records,
        s.inflight_records,
        s.inflight_bytes,
        s.committed_offset,
    )


class _StatusTimer:
    """Cancels whichever call_later handle is current."""

    def __init__(self, current: Callable[[], asyncio.TimerHandle]) -> None:
        self._current = current

    def cancel(self) -> None:
        self._current().cancel()


def _schedule_status(
    loop: asyncio.AbstractEventLoop, state: RunState, every_s: float
) -> _StatusTimer:
    # A self-rescheduling callback rather than a task: nothing to cancel in the TaskGroup.
    handle: asyncio.TimerHandle

    def tick() -> None:
        nonlocal handle
        _log_status(state)
        handle = loop.call_later(every_s, tick)

    handle = loop.call_later(every_s, tick)
    return _StatusTimer(lambda: handle)


@dataclass(slots=True)
class _Run:
    """One run of an opened service: what the stop sequence needs."""

    settings: Settings
    stop: StopRequest
    storage: Storage
    source: Source
    state: RunState
    metrics: Metrics


async def _pipeline(run: _Run) -> float | None:
    """Runs reader and storage until stop or end of source, then drains in order. Returns the
    drain deadline (loop time), or None when the source ended and no stop was asked for: then
    nothing is in a hurry and the drain is not cut short."""
    settings, stop, storage, state, metrics = (
        run.settings,
        run.stop,
        run.storage,
        run.state,
        run.metrics,
    )
    loop = asyncio.get_running_loop()
    queue = BatchQueue(settings.queue_max_batches)
    state.queue = queue
    deadline: float | None = None
    source = run.source
    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(
            run_reader(source, storage.committed_offset, queue, state.tally, state.rejects),
            name="shovel-reader",
        )
        writer = tg.create_task(run_storage(queue, storage), name="shovel-storage")
        acker = None
        if isinstance(source, AcknowledgedSource):
            # Third child: acknowledges what storage made durable. Stopped after the drain;
            # the last acknowledgements follow the storage close (see _run_and_close).
            acker = tg.create_task(
                source.run_acks(lambda: storage.stats().records_durable), name="shovel-acks"
            )
        await _until(stop.stop, reader)
        state.stop_started = time.monotonic()
        metrics.ready = False
        metrics.shutdown_in_progress.set(1)
        if stop.requested:
            deadline = loop.time() + settings.shutdown_timeout_s
            log.info(
                "%s received: stopping (deadline %.1fs)",
                stop.first_signal,
                settings.shutdown_timeout_s,
            )
        else:
            log.info("end of source reached: storing what was read")

        phase = Phase("stop reader")
        reader.cancel()
        await _until(stop.hurry, reader, limit_s=_left(loop, deadline))
        if not reader.done():
            # Stuck finishing a read (a hung filesystem): interrupt that wait too. Reads run
            # on daemon threads, so the stuck one cannot hold up the exit either.
            log.warning("the reader did not stop in time; abandoning its pending read")
            reader.cancel()
            await asyncio.wait({reader})
        queue.close()
        phase.done(f"{state.tally.records} records read, {queue.records} queued")

        phase = Phase("drain queue")
        if deadline is None:
            await _until(stop.stop, writer)
            if not writer.done():
                deadline = _stop_arrived_late(loop, stop, settings)
        await _until(stop.hurry, writer, limit_s=_left(loop, deadline))
        if not writer.done():
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
        else:
            phase.done(f"{writer.result()} batches handed to storage")
        if acker is not None:
            acker.cancel()
    return deadline


def source_for(settings: Settings) -> Source:
    """The source the settings name, ready to resume. Raises SourceError."""
    return open_source(
        settings.source_spec,
        settings.read_chunk_bytes,
        settings.max_record_bytes,
        settings.generator_rate,
        settings.follow_config,
        queue_max_batches=settings.queue_max_batches,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        output_dir=settings.output_dir,
    )


async def run_service(settings: Settings) -> int:
    """Runs shovel until stopped or the source ends; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = StopRequest()
    stop.attach(loop)
    metrics = Metrics()
    state = RunState(RejectWriter(settings.output_dir, settings.max_record_bytes))
    metrics.read_live_state_from(lambda: _live_state(state))
    server: MetricsServer | None = None
    status: _StatusTimer | None = None
    try:
        try:
            source = source_for(settings)
        except SourceError as e:
            log.error("%s", e)
            return ExitCode.USAGE
        state.source = source
        if isinstance(source, AcknowledgedSource):
            source.progress.ack_latency = metrics.nats_ack_latency.observe
            metrics.show_nats()
        if stop.requested:
            log.info("%s received during startup: nothing was read; exiting", stop.first_signal)
            return ExitCode.OK
        # The lock first: a second shovel on this directory is told that, whatever else
        # (the metrics port, say) it would also collide on.
        try:
            storage = await Storage.open(storage_config(settings))
        except (DirectoryLockedError, CorruptStoreError, StorageError) as e:
            log.error("cannot open the output directory: %s", e)
            return ExitCode.FATAL
        if settings.metrics_port:
            try:
                server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port)
            except OSError as e:
                log.error(
                    "cannot serve metrics on %s: %s; choose another port with --metrics-port "
                    "(or %sMETRICS_PORT), or 0 to serve none",
                    host_port(settings.metrics_host, settings.metrics_port),
                    e.strerror or e,
                    ENV_PREFIX,
                )
                await _close_unused(storage, settings)
                return ExitCode.USAGE
            server.start()
            log.info("metrics on http://%s/metrics", host_port(server.host, server.port))
        state.storage = storage
        storage.on_durable(metrics.write_duration.observe)
        if isinstance(source, AcknowledgedSource):
            storage.on_durable(lambda _s: source.durable_progress())
        for note in storage.recovery_notes:
            log.warning("recovery: %s", note)
        await _take_over_report(settings, metrics, state)
        where = await _resume(settings, storage, source)
        if isinstance(source, AcknowledgedSource) and not isinstance(where, _Refused):
            opened = await _open_acknowledged(source, stop)
            where = opened if isinstance(opened, _Refused) else f"{where}; {opened}"
        if isinstance(where, _Refused):
            await _save_final_report(
                settings,
                state,
                StopReport(
                    reason=where.reason,
                    started_at=state.started_at,
                    exit_code=where.code,
                    ended_at=time.time(),
                    records_read=0,
                    records_stored=0,
                    undelivered=0,
                    stop_duration_s=0.0,
                    committed_offset=storage.committed_offset,
                    detail=where.why,
                ),
            )
            await _close_unused(storage, settings)
            if isinstance(source, AcknowledgedSource):
                await source.close()
            return where.code
        log.info(
            "shovel started: %s -> %s, %s (%d records already stored)",
            source.description,
            settings.output_dir,
            where,
            storage.initial_records,
        )
        metrics.ready = not stop.requested
        if settings.status_interval_s > 0:
            status = _schedule_status(loop, state, settings.status_interval_s)
        return await _run_and_close(_Run(settings, stop, storage, source, state, metrics))
    finally:
        if status is not None:
            status.cancel()
        stop.detach()
        if server is not None:
            server.stop()


async def _close_unused(storage: Storage, settings: Settings) -> None:
    """Closes the output directory of a run that does not go on (nothing was written)."""
    try:
        await storage.close(settings.shutdown_timeout_s)
    except StorageError as err:
        log.error("closing the output directory failed too: %s", err)


@dataclass(frozen=True, slots=True)
class _Refused:
    """Why the run must not go on (already logged)."""

    why: str
    code: ExitCode = ExitCode.FATAL
    reason: str = "refused"


# How long the running marker may take to write at start before the run goes on without it.
_MARKER_WRITE_S = 5.0
# How long the final stop report may take to write: it comes out of the 5 s margin before the
# orchestrator's kill.
_REPORT_WRITE_S = 1.0
# The least time the last acknowledgements and the broker's close get, even past the deadline:
# it comes out of the same margin.
_LAST_ACKS_S = 1.0
# Blocking file work of the runner (stop reports, a source's resume check): daemon threads, so
# that a hung filesystem holds up neither the stop nor the exit.
_THREADS = DaemonThreads()


async def _take_over_report(settings: Settings, metrics: Metrics, state: RunState) -> None:
    """Exports the previous run's stop report and marks this run as going on. Neither is
    worth failing the run for: a problem is logged and the run goes on."""
    loop = asyncio.get_running_loop()
    try:
        previous = await loop.run_in_executor(_THREADS, read_report, settings.output_dir)
    except ReportError as e:
        log.warning("ignoring %s: %s", settings.output_dir / REPORT_FILE, e)
        previous = None
    if previous is not None:
        metrics.show_last_stop(previous)
        if previous.running or previous.exit_code:
            log.warning("last stop: %s", describe(previous))
        else:
            log.info("last stop: %s", describe(previous))
    marker = running_marker(state.started_at)
    if await _save_report(settings, write_report, (settings.output_dir, marker), _MARKER_WRITE_S):
        state.marker = marker


async def _save_report(
    settings: Settings, write: Callable[..., object], args: tuple[object, ...], limit_s: float
) -> bool:
    """Runs `write(*args)` off the loop, bounded in time; a failure is logged, not raised.
    Returns whether it completed."""
    job = asyncio.get_running_loop().run_in_executor(_THREADS, write, *args)
    try:
        await asyncio.wait_for(job, limit_s)
    except TimeoutError:
        log.warning(
            "writing %s took over %.0fs: going on without it",
            settings.output_dir / REPORT_FILE,
            limit_s,
        )
    except OSError as e:
        log.warning("cannot write %s: %s", settings.output_dir / REPORT_FILE, e)
    else:
        return True
    return False


async def _save_final_report(settings: Settings, state: RunState, report: StopReport) -> None:
    """Replaces this run's marker with its report (see laststop.write_final_report)."""
    if state.marker is None:
        log.warning(
            "not writing %s: this run could not mark it as its own at start",
            settings.output_dir / REPORT_FILE,
        )
        return
    await _save_report(
        settings,
        write_final_report,
        (settings.output_dir, report, state.marker),
        _REPORT_WRITE_S,
    )


async def _open_acknowledged(source: AcknowledgedSource, stop: StopRequest) -> str | _Refused:
    """Connects a source that is acknowledged (a broker); a stop that comes first ends the run
    (exit 0, nothing was read). Refuses with exit code 1 when the source is not the stored
    one, 2 when it is not usable as configured (a missing stream, a push consumer)."""
    opening = asyncio.ensure_future(source.open())
    await _until(stop.stop, opening)
    if not opening.done():
        opening.cancel()
        await asyncio.wait({opening})
        log.info("%s received while connecting: nothing was read; exiting", stop.first_signal)
        return _Refused("stopped while connecting", ExitCode.OK, "signal")
    try:
        return opening.result()
    except SourceMismatch as e:
        log.error("refusing to start: %s", e)
        return _Refused(f"refusing to start: {e}")
    except SourceError as e:
        log.error("%s", e)
        return _Refused(str(e), ExitCode.USAGE)
    except Exception as e:
        # A bug, not an operating condition: keep the traceback, close what was opened.
        log.error("unexpected error while connecting", exc_info=e)
        return _Refused(f"unexpected error while connecting: {e!r}")


async def _resume(settings: Settings, storage: Storage, source: Source) -> str | _Refused:
    """Checks that `source` continues what the output directory holds, then brings rejected/
    in line with the committed offset. Returns the phrase for the start line, or why (logged)
    the run must not go on."""
    try:
        # Blocking (stat, a fingerprint, a directory scan): on a daemon thread, so that a hung
        # filesystem cannot hold up the exit.
        where = await asyncio.get_running_loop().run_in_executor(
            _THREADS, source.resume, storage.committed_offset, storage.initial_source
        )
    except SourceMismatch as e:
        log.error("refusing to start: %s", e)
        return _Refused(f"refusing to start: {e}")
    try:
        # Only now that the source is known to be the stored one: a line a crash kept in
        # rejected/ but never committed past is read again and must not be kept twice.
        notes = await asyncio.to_thread(
            recover_rejected, settings.output_dir, storage.committed_offset, source.replayable
        )
    except OSError as e:
        log.error("cannot recover %s: %s", settings.output_dir / REJECTED_DIR, e)
        return _Refused(f"cannot recover {settings.output_dir / REJECTED_DIR}: {e}")
    for note in notes:
        log.warning("recovery: %s", note)
    return str(where)


async def _run_and_close(run: _Run) -> int:
    settings, storage, state, metrics = run.settings, run.storage, run.state, run.metrics
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    try:
        deadline = await _pipeline(run)
    except* StorageError as group:
        state.fatal = state.fatal or f"storage failed: {group.exceptions[0]}"
    except* SourceError as group:
        state.fatal = state.fatal or f"source failed: {group.exceptions[0]}"
    except* OSError as group:
        state.fatal = state.fatal or f"reading the source failed: {group.exceptions[0]}"
    except* Exception as group:
        # A bug, not an operating condition: keep the traceback, still close and commit.
        log.error("unexpected error", exc_info=group.exceptions[0])
        state.fatal = state.fatal or f"unexpected error: {group.exceptions[0]!r}"
    if deadline is None and state.fatal is None:
        # The source ended and nobody asked to stop: wait for everything to be durable,
        # unless a stop signal arrives first.
        phase = Phase("flush")
        flushed = asyncio.ensure_future(storage.flushed())
        try:
            await _until(run.stop.stop, flushed)
        finally:
            finished = flushed.done()
            flushed.cancel()
        if finished:
            # A storage error here is raised again by close() below; mark it as seen.
            flushed.exception()
            phase.done()
        else:
            deadline = _stop_arrived_late(loop, run.stop, settings)
            phase.done("cut short by a stop signal")
    if deadline is None:
        # Everything is durable, or the run failed: the close gets the usual budget from now.
        deadline = loop.time() + settings.shutdown_timeout_s
    if state.stop_started is None:
        state.stop_started = time.monotonic()
        metrics.ready = False
        metrics.shutdown_in_progress.set(1)

    phase = Phase("close storage")
    remaining = max(deadline - loop.time(), 0.0)
    try:
        report = await storage.close(remaining)
        phase.done(f"committed offset {report.committed_offset}")
    except CloseTimeoutError as e:
        state.close_timed_out = True
        phase.done(str(e))
    except StorageError as e:
        state.fatal = state.fatal or f"storage failed: {e}"
        phase.done(f"failed: {e}")
    if isinstance(run.source, AcknowledgedSource):
        # Only now is everything drained fsynced: acknowledge it, then close the connection.
        phase = Phase("acknowledge and disconnect")
        try:
            await run.source.finish(
                storage.stats().records_durable, max(deadline - loop.time(), _LAST_ACKS_S)
            )
            phase.done()
        except Exception as e:
            # A bug, not an operating condition: the summary and the report still follow.
            log.error("unexpected error while acknowledging", exc_info=e)
            state.fatal = state.fatal or f"unexpected error while acknowledging: {e!r}"
            phase.done("failed")

    if state.tally.error is not None:
        state.fatal = state.fatal or state.tally.error
    stats = storage.stats()
    undelivered = max(state.tally.records - stats.records_durable, 0) + state.tally.unkept
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
    if settings.output_dir.is_dir():
        await _save_final_report(
            settings,
            state,
            StopReport(
                reason="fatal"
                if state.fatal is not None
                else "signal"
                if run.stop.requested
                else "end of source",
                started_at=state.started_at,
                exit_code=code,
                signal=run.stop.first_signal if run.stop.requested else None,
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


def _exit_code(run: _Run, undelivered: int, committed_offset: int) -> ExitCode:
    """Logs how the run ended; returns its exit code."""
    state, settings = run.state, run.settings
    if state.fatal is not None:
        if not settings.output_dir.is_dir():
            state.fatal += f" (the output directory {settings.output_dir} no longer exists)"
        log.error("fatal: %s", state.fatal)
        return ExitCode.FATAL
    if undelivered or state.close_timed_out:
        log.error(
            "%d records were read but are not durable; the committed offset (%d) excludes them%s",
            undelivered,
            committed_offset,
            "; a replayable source will read them again next run"
            if run.source.replayable
            else "; this source cannot replay them",
        )
        return ExitCode.UNDELIVERED
    if not run.source.replayable:
        log.info(
            "%s: every record read is durable (a stream is never read twice: this holds for a "
            "stop by signal or end of input; a SIGKILL loses what was read but not yet "
            "committed, and nothing can count it)",
            run.source.description,
        )
    return ExitCode.OK
