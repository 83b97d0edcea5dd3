"""The report of each stop, kept in OUTPUT_DIR/last-stop.json so that the next start can
export it: the gauges set in the last moments of a run are almost never scraped before the
process is gone, so a stop that left records undelivered would otherwise stay invisible to
Prometheus.

At start, holding the directory's lock, the previous report is read (and exported as the
shovel_last_stop_* gauges), then replaced by a marker saying a run is going on; at the end of
the run the marker is replaced by the full report. A marker found at start means that the
previous run ended without writing its report: it was killed (SIGKILL, OOM), crashed, or the
machine lost power. Every write is atomic (a temporary file, fsynced, renamed, the directory
fsynced) and never goes through a symbolic link.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from shovel.redact import redact
from shovel.safefiles import LOCK_FILE, create_file, fsync_dir

log = logging.getLogger(__name__)

REPORT_FILE = "last-stop.json"
_VERSION = 1

# The exit code exported for a run that ended without a report: no exit code of shovel's.
NO_REPORT_EXIT_CODE = -1


@dataclass(frozen=True, slots=True)
class StopReport:
    """One run's end, or (exit_code None) a run going on."""

    # "signal", "end of source", "fatal", "refused", or "running".
    reason: str
    started_at: float
    exit_code: int | None = None
    signal: str | None = None
    ended_at: float | None = None
    records_read: int | None = None
    records_stored: int | None = None
    undelivered: int | None = None
    stop_duration_s: float | None = None
    committed_offset: int | None = None
    detail: str | None = None
    # The process that wrote it: a run replaces only its own marker.
    pid: int | None = None

    @property
    def running(self) -> bool:
        """Whether this is the marker of a run that never wrote its report."""
        return self.exit_code is None


def running_marker(started_at: float | None = None) -> StopReport:
    """The marker written at start."""
    return StopReport(
        reason="running",
        started_at=time.time() if started_at is None else started_at,
        pid=os.getpid(),
    )


class ReportError(ValueError):
    """last-stop.json cannot be read."""


# Bounds of the values a report may hold: anything else is damage, not a report.
_MAX_SECONDS = 1e11
_WHOLE_NUMBERS = (
    ("exit_code", -1, 255),
    ("pid", 1, 2**22),
    ("records_read", 0, 2**64 - 1),
    ("records_stored", 0, 2**64 - 1),
    ("undelivered", 0, 2**64 - 1),
    ("committed_offset", 0, 2**64 - 1),
)


def _check(report: dict[str, object]) -> StopReport:
    if report.get("v") != _VERSION:
        raise ReportError(f"unknown version {report.get('v')!r}")
    known = {f.name for f in fields(StopReport)}
    values = {name: value for name, value in report.items() if name != "v"}
    unknown = set(values) - known
    if unknown:
        raise ReportError(f"unknown fields {sorted(unknown)}")
    if not isinstance(values.get("reason"), str):
        raise ReportError("'reason' is not text")
    if "started_at" not in values:
        raise ReportError("'started_at' is missing")
    for name in ("started_at", "ended_at", "stop_duration_s"):
        v = values.get(name)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= _MAX_SECONDS
        ):
            raise ReportError(f"{name!r} is not a time in seconds: {v!r}")
    for name, low, high in _WHOLE_NUMBERS:
        v = values.get(name)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high
        ):
            raise ReportError(f"{name!r} is not a whole number from {low} to {high}: {v!r}")
    for name in ("signal", "detail"):
        v = values.get(name)
        if v is not None and not isinstance(v, str):
            raise ReportError(f"{name!r} is not text")
    return StopReport(**values)  # type: ignore[arg-type]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def read_report(output_dir: Path) -> StopReport | None:
    """The report in `output_dir`, None when there is none; raises ReportError when it is
    damaged or cannot be read (blocking)."""
    path = output_dir / REPORT_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReportError(f"cannot open it: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(65536)
    except OSError as e:
        raise ReportError(f"cannot read it: {e.strerror}") from None
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except ValueError as e:
        raise ReportError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ReportError("not a JSON object")
    return _check(body)


def write_report(output_dir: Path, report: StopReport) -> None:
    """Replaces the report in `output_dir` with `report`, atomically and durably (blocking).
    The caller holds the directory's lock."""
    for stale in output_dir.glob(f"{REPORT_FILE}.*.tmp"):
        # Left by a writer that died or gave up; unlinked, so a planted link is not followed.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    _replace(output_dir, report)


def write_final_report(output_dir: Path, report: StopReport, marker: StopReport) -> bool:
    """Replaces this run's `marker` with its final `report` (blocking). Called after the store
    was closed, when the directory's lock is no longer this run's: the lock is taken again for
    the write when it is free; when it is not (this run's own abandoned writes may still hold
    it after a timed-out close, or a new run has just taken the directory), the report is
    written only if the file still holds this run's marker. Returns whether it was written."""
    lock_fd = _try_lock(output_dir)
    try:
        try:
            current = read_report(output_dir)
        except ReportError:
            current = None
        if current != marker:
            log.warning(
                "not writing %s: another shovel took %s after this run closed it",
                output_dir / REPORT_FILE,
                output_dir,
            )
            return False
        _replace(output_dir, report)
        return True
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _try_lock(output_dir: Path) -> int | None:
    """The directory's lock file, locked; None when it is held or cannot be opened."""
    try:
        fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _replace(output_dir: Path, report: StopReport) -> None:
    # A temporary name of this process's own: a writer that gave up on a hung write cannot
    # rename another's file.
    tmp, path = output_dir / f"{REPORT_FILE}.{os.getpid()}.tmp", output_dir / REPORT_FILE
    body = {
        "v": _VERSION,
        # Texts (a fatal error's detail) may quote what the user typed: no secret goes to disk.
        **{k: redact(v) if isinstance(v, str) else v for k, v in asdict(report).items()},
    }
    body = {k: v for k, v in body.items() if v is not None}
    data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with create_file(tmp, exclusive=True) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(output_dir)


def describe(report: StopReport) -> str:
    """One phrase for the start-up log."""
    if report.running:
        return (
            f"the previous run (started {_when(report.started_at)}) ended without a report: it "
            "was killed (SIGKILL, OOM), crashed or lost power; what it committed is kept"
        )
    how = report.reason + (f" ({report.signal})" if report.signal else "")
    text = (
        f"the previous run stopped on {how} at {_when(report.ended_at)}: exit "
        f"{report.exit_code}, undelivered {report.undelivered}"
    )
    if report.detail:
        text += f", {report.detail}"
    return text


def _when(t: float | None) -> str:
    try:
        if t is not None:
            return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
    except (OverflowError, ValueError, OSError):
        pass
    return "an unknown time"
