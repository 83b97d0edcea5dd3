"""Opening a run, in order: the source (syntax and files only), the output directory (its lock
first), the metrics server, the previous run's stop report, the source's check against the
checkpoint, rejected/ brought in line with it, and the source's connection. A stop signal
before the run starts ends it with nothing read; a source that is not the stored one, or
cannot be used, refuses the run with a stop report that says why."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from shovel._native import SINK_MAX_BATCH
from shovel._threads import off_loop
from shovel.exitcodes import ExitCode
from shovel.service import reports
from shovel.service.laststop import StopReport
from shovel.service.metrics import Metrics, MetricsServer, host_port
from shovel.service.signals import StopRequest
from shovel.service.state import RunState
from shovel.service.waits import until
from shovel.settings import Settings
from shovel.sources import Source, SourceError, SourceMismatch, SourceUnavailable
from shovel.storage import (
    CorruptStoreError,
    DirectoryLockedError,
    OpenStorage,
    StorageError,
    Store,
)
from shovel.storage.natsink import SinkError, SinkStore
from shovel.storage.rejects import REJECTED_DIR, RejectWriter, recover_rejected
from shovel.storage.sinkmetrics import SinkCollector
from shovel.storage.sinkurl import SinkSpec

# The service speaks as "shovel", as the runner does: these lines were its own.
log = logging.getLogger("shovel")

# How the service opens its source (source_for, unless a caller passes another).
OpenSource = Callable[[Settings], Source]


def source_for(settings: Settings) -> Source:
    """The source the settings name, ready to resume. Raises SourceError."""
    return settings.source_spec.open(settings.source_options)


@dataclass(slots=True)
class Run:
    """An opened run: what the stop sequence works on."""

    settings: Settings
    stop: StopRequest
    source: Source
    storage: Store
    state: RunState
    metrics: Metrics


@dataclass(frozen=True, slots=True)
class _Refused:
    """Why the run must not go on (already logged)."""

    why: str
    code: ExitCode = ExitCode.FATAL
    reason: str = "refused"


async def open_run(
    settings: Settings,
    stop: StopRequest,
    cleanup: contextlib.ExitStack,
    open_source: OpenSource,
    open_storage: OpenStorage,
) -> Run | ExitCode:
    """Opens everything a run needs, or says (in the log, and in a stop report once the output
    directory is open) why it cannot; `cleanup` stops the metrics server when the run ends.
    Returns the run, or the exit code of one that ends here."""
    started_at = time.time()
    metrics = Metrics()
    try:
        source = open_source(settings)
    except SourceError as e:
        # Named as the user typed it, as a usage error is.
        log.error("%s %r: %s", settings.given_as("source"), settings.source, e)
        return ExitCode.USAGE
    metrics.show(source.collectors())
    if stop.requested:
        log.info("%s received during startup: nothing was read; exiting", stop.first_signal)
        return ExitCode.OK
    storage = await _open_storage(settings, source, stop, open_storage, metrics)
    if isinstance(storage, ExitCode):
        return storage
    sink, side_dir = settings.sink_spec, settings.side_dir
    record_limit = settings.max_record_bytes
    if isinstance(storage, SinkStore):
        record_limit = min(record_limit, storage.record_limit)
        source.cap_record_bytes(record_limit)
    state = RunState(RejectWriter(side_dir, record_limit), storage, started_at=started_at)
    metrics.read_live_state_from(state.live)
    if settings.metrics_port:
        try:
            server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port)
        except OSError as e:
            log.error(
                "%s %r: cannot serve metrics on %s: %s; choose another port, or 0 to serve none",
                settings.given_as("metrics_port"),
                settings.metrics_port,
                host_port(settings.metrics_host, settings.metrics_port),
                e.strerror or e,
            )
            await close_unused(storage, settings)
            return ExitCode.USAGE
        cleanup.callback(server.stop)
        server.start()
        log.info("metrics on http://%s/metrics", host_port(server.host, server.port))
    storage.on_durable(metrics.write_duration.observe)
    storage.on_durable(lambda _s: source.durable_progress())
    for note in storage.recovery_notes:
        log.warning("recovery: %s", note)
    if side_dir is not None:
        await reports.take_over(side_dir, metrics, state)
    where = await _resume(settings, storage, source)
    if not isinstance(where, _Refused):
        opened = await _connect(source, stop)
        where = opened if isinstance(opened, _Refused) else "; ".join(filter(None, (where, opened)))
    if isinstance(where, _Refused):
        await _refuse(settings, storage, source, state, where)
        return where.code
    log.info(
        "shovel started: %s -> %s, %s (%d records already stored)",
        source.description,
        settings.output_dir if sink is None else sink.describe(),
        where,
        storage.initial_records,
    )
    metrics.ready = not stop.requested
    return Run(settings, stop, source, storage, state, metrics)


async def _open_storage(
    settings: Settings,
    source: Source,
    stop: StopRequest,
    open_storage: OpenStorage,
    metrics: Metrics,
) -> Store | ExitCode:
    """Opens where records go: the JetStream sink, or the output directory (its lock first: a
    second shovel on it is told that, whatever else, the metrics port say, it would also
    collide on). Returns the exit code of a run that ends here (logged)."""
    sink = settings.sink_spec
    if sink is not None:
        opened = await _open_sink(settings, sink, source, stop)
        if isinstance(opened, SinkStore):
            metrics.show([SinkCollector(opened.stats)])
        return opened
    try:
        return await open_storage(settings.storage_config)
    except (DirectoryLockedError, CorruptStoreError, StorageError) as e:
        log.error(
            "%s %r: cannot open it: %s",
            settings.given_as("output_dir"),
            str(settings.output_dir),
            e,
        )
        return ExitCode.FATAL


async def _resume(settings: Settings, storage: Store, source: Source) -> str | _Refused:
    """Checks that `source` continues what the output directory holds, then brings rejected/
    in line with the committed offset. Returns the phrase for the start line, or why (logged)
    the run must not go on."""
    try:
        # Blocking (stat, a fingerprint, a directory scan): off the loop, so that a hung
        # filesystem cannot hold up the exit.
        where = await off_loop(source.resume, storage.committed_offset, storage.initial_source)
    except SourceMismatch as e:
        log.error("refusing to start: %s", e)
        return _Refused(f"refusing to start: {e}")
    side_dir = settings.side_dir
    if side_dir is None:
        return str(where)
    try:
        # Only now that the source is known to be the stored one: a line a crash kept in
        # rejected/ but never committed past is read again and must not be kept twice.
        notes = await off_loop(
            recover_rejected, side_dir, storage.committed_offset, source.replayable
        )
    except OSError as e:
        log.error("cannot recover %s: %s", side_dir / REJECTED_DIR, e)
        return _Refused(f"cannot recover {side_dir / REJECTED_DIR}: {e}")
    for note in notes:
        log.warning("recovery: %s", note)
    return str(where)


async def _open_sink(
    settings: Settings, sink: SinkSpec, source: Source, stop: StopRequest
) -> SinkStore | ExitCode:
    """Opens the JetStream sink: the stream checked and the resume point read back. A stop
    signal first ends the run (exit 0, nothing was read); a refusal ends it with exit 1 (2 for
    settings that cannot work), its reason logged."""
    named = f"{settings.given_as('sink')} {sink.describe()}"
    if source.offset_unit == "batch" and (source.max_batch_records or 0) > SINK_MAX_BATCH:
        log.error(
            "%s: the source's batches hold up to %d records, and one atomic batch takes at most "
            "%d; use batch=%d or less on the source",
            named,
            source.max_batch_records,
            SINK_MAX_BATCH,
            SINK_MAX_BATCH,
        )
        return ExitCode.USAGE
    try:
        sink.check_files()
        side_dir = settings.side_dir
        if side_dir is not None:
            await off_loop(side_dir.mkdir, parents=True, exist_ok=True)
    except (ValueError, OSError) as e:
        log.error("%s: %s", named, e)
        return ExitCode.USAGE
    opening = asyncio.ensure_future(
        SinkStore.open(
            sink,
            connect_timeout_s=settings.nats_connect_timeout_s,
            max_inflight_bytes=settings.max_inflight_bytes,
            offset_unit=source.offset_unit,
        )
    )
    await until(stop.stop, opening)
    if not opening.done():
        opening.cancel()
        await asyncio.wait({opening})
        log.info("%s received while opening the sink: nothing was read; exiting", stop.first_signal)
        return ExitCode.OK
    try:
        store = opening.result()
    except SinkError as e:
        log.error("%s: %s", named, e)
        return ExitCode.FATAL
    held = store.opened
    log.info(
        "sink %s: %s",
        sink.describe(),
        f"resuming after stream sequence {held.sequence} (source offset {held.offset})"
        if held.sequence
        else "the subject is empty: starting from the beginning",
    )
    return store


async def _connect(source: Source, stop: StopRequest) -> str | _Refused:
    """Connects the source (a broker; nothing for a file); a stop that comes first ends the run
    (exit 0, nothing was read). Refuses with exit code 1 when the source is not the stored
    one or no server answered within the connect timeout, 2 when it is not usable as configured
    (a missing stream, a push consumer)."""
    opening = asyncio.ensure_future(source.open())
    await until(stop.stop, opening)
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
    except SourceUnavailable as e:
        log.error("%s", e)
        return _Refused(str(e), ExitCode.FATAL)
    except SourceError as e:
        log.error("%s", e)
        return _Refused(str(e), ExitCode.USAGE)
    except Exception as e:
        # A bug, not an operating condition: keep the traceback, close what was opened.
        log.error("unexpected error while connecting", exc_info=e)
        return _Refused(f"unexpected error while connecting: {e!r}")


async def _refuse(
    settings: Settings, storage: Store, source: Source, state: RunState, refused: _Refused
) -> None:
    """Ends a run that does not start: its stop report says why, and what was opened closes."""
    side_dir = settings.side_dir
    if side_dir is None:
        await close_unused(storage, settings)
        await source.close()
        return
    await reports.save_final(
        side_dir,
        state,
        StopReport(
            reason=refused.reason,
            started_at=state.started_at,
            exit_code=refused.code,
            ended_at=time.time(),
            records_read=0,
            records_stored=0,
            undelivered=0,
            stop_duration_s=0.0,
            committed_offset=storage.committed_offset,
            detail=refused.why,
        ),
    )
    await close_unused(storage, settings)
    await source.close()


async def close_unused(storage: Store, settings: Settings) -> None:
    """Closes the output directory of a run that does not go on (nothing was written)."""
    try:
        await storage.close(settings.shutdown_timeout_s)
    except StorageError as err:
        log.error("closing the output directory failed too: %s", err)
