"""Lines too long to be records: kept whole in OUTPUT/rejected/, durably, never dropped.

Each rejected line goes to `rejected/<source offset, 20 digits>.rec`, written under a
`.partial` name and renamed once whole. The file is fsynced (and its directory) before the
reader queues anything after it, so the committed offset only moves past a rejected line once
the line is safe. A line read again after a crash rewrites the same file from the start, so
replays leave no duplicates.

Every file operation runs on a daemon thread, each after the one before, so pieces reach the
disk in source order while a hung filesystem blocks neither the event loop (and with it the
stop deadline) nor the interpreter's exit. A failed create, write or rename is retried as the
native store retries its segment writes (the same errors, backoff and count, each retry
logged with the path); an fsync never is, for the same reason as there.

At startup, `recover_rejected` makes rejected/ agree with the committed offset: a line kept by
a run that crashed before committing past it is read again, and must not be kept twice.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from shovel import safefiles
from shovel._native import RETRIES, retry_wait_s, retryable_errno
from shovel._threads import THREADS
from shovel.batches import Rejected

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
# At most this many rejected lines are logged one by one per window; the rest are counted.
LOG_BURST = 10
LOG_WINDOW_S = 60.0

_T = TypeVar("_T")


def _failure(what: str, path: Path, e: OSError) -> OSError:
    """`e` as the store words its errors: what failed, for which file, why, the errno's name."""
    name = errno.errorcode.get(e.errno or 0)
    why = e.strerror or str(e)
    return OSError(e.errno, f"{what} failed for {path}: {why}" + (f" [{name}]" if name else ""))


def _retrying(
    what: str, path: Path, op: Callable[[], _T], undo: Callable[[], None] | None = None
) -> _T:
    """`op()`, retried (after `undo()`) like a segment write when it fails with an error that
    may pass; raises the error that ends it, naming `what` and `path`. Blocking."""
    attempt = 0
    while True:
        try:
            return op()
        except OSError as e:
            if undo is not None:
                undo()
            failure = _failure(what, path, e)
            if e.errno is None or attempt >= RETRIES or not retryable_errno(e.errno):
                raise failure from e
            attempt += 1
            wait_s = retry_wait_s(attempt)
            log.warning(
                "%s; retrying (%d/%d) in %d ms", failure.strerror, attempt, RETRIES, wait_s * 1000
            )
            time.sleep(wait_s)


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Writes all of `data` to an unbuffered file (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def rejected_path(output_dir: Path, offset: int) -> Path:
    """Where the line starting at source offset `offset` is kept."""
    return output_dir / REJECTED_DIR / f"{offset:020d}.rec"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _offset_of(name: str) -> int | None:
    """The source offset in a `.rec` file's name, or None for any other name."""
    stem, _, ext = name.partition(".")
    if ext != "rec" or len(stem) != 20 or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def _unused(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`... whichever does not exist yet."""
    candidate, n = path, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def recover_rejected(output_dir: Path, committed_offset: int, replayable: bool) -> list[str]:
    """Makes rejected/ agree with the committed offset; blocking, for startup, with the output
    directory locked. Returns one note per file changed.

    Every `.partial` (a line whose write a crash cut short) is removed. A `.rec` at or past the
    committed offset holds a line that the crashed run kept but never committed past. A
    replayable source reads that line again, and may now store it as a record (with a larger
    --max-record-bytes): its file is removed. A stream cannot be read again, so that file is
    the only copy: it is renamed `<name>.uncommitted` (numbered if that exists), out of the way
    of the next run's line at the same offset.
    """
    directory = output_dir / REJECTED_DIR
    if directory.is_symlink():
        raise safefiles.link_refused(directory)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    notes = []
    for name in names:
        path = directory / name
        if name.endswith(".partial"):
            path.unlink()
            notes.append(f"removed {path}, left by an interrupted write of a rejected line")
            continue
        offset = _offset_of(name)
        if offset is None or offset < committed_offset:
            continue
        why = f"the line at source offset {offset} is past the committed offset {committed_offset}"
        if replayable:
            path.unlink()
            notes.append(f"removed {path}: {why} and will be read again")
        else:
            # The directory lock is held: nothing can take the name between the check and the
            # rename.
            aside = _unused(path.with_name(name + ".uncommitted"))
            os.rename(path, aside)
            notes.append(f"kept {path} as {aside}: {why} and this source cannot be read again")
    if notes:
        safefiles.fsync_dir(directory)
    return notes


@dataclass(slots=True, eq=False)
class _Line:
    """A rejected line being written."""

    offset: int
    # Its `.rec` name; it is written under the `.partial` name next to it until whole.
    path: Path
    # The continuation of a line stored before without its end, not a line over the limit.
    continues: bool = False
    # Opened, written, sealed and closed by file operations only (one at a time, in order).
    file: BinaryIO | None = None
    # Bytes written so far; counted on the loop once a piece is written.
    size: int = 0
    # The same, counted on the file thread as each write ends: where a failed write is cut
    # back to.
    size_on_disk: int = 0
    # A piece failed, or a stop stopped waiting for one: nothing more of it is written, and it
    # is never sealed (unless the piece a stop stopped waiting for was its last and succeeds).
    given_up: bool = False
    # Its loss was raised to the caller (as the OSError of the piece that failed), once.
    reported: bool = False


def _discard(line: _Line) -> None:
    """Closes the file of a line that will not be finished and removes its `.partial`. Best
    effort: recovery removes a `.partial` left behind at the next start."""
    partial = _partial(line.path)
    try:
        if line.file is not None:
            f, line.file = line.file, None
            f.close()
        partial.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove %s, a rejected line left unfinished: %s", partial, e)


class RejectWriter:
    """Writes rejected lines; counts them; logs each (rate-limited) with its offset."""

    def __init__(self, output_dir: Path | None, max_record_bytes: int) -> None:
        # None: no directory to keep lines in (a NATS sink without --output-dir); a line
        # over the limit then stops the run before it, unstored and uncommitted.
        self._dir = output_dir
        self.max_record_bytes = max_record_bytes
        self.records = 0
        self.bytes = 0
        self._line: _Line | None = None
        # Set once the last file operation submitted has ended. Each operation waits for the
        # one before, so the order holds even after a stop gave up waiting for one.
        self._idle = threading.Event()
        self._idle.set()
        self._window_start = 0.0
        self._logged_in_window = 0
        self._unlogged = 0

    @property
    def output_dir(self) -> Path:
        """Where rejected/ is; OSError when there is none."""
        if self._dir is None:
            raise OSError(
                errno.ENOENT,
                "the NATS sink keeps lines longer than the stream's largest message in "
                "OUTPUT_DIR/rejected/, and no --output-dir was given",
            )
        return self._dir

    def _in_turn(self, op: Callable[[], None]) -> Callable[[], None]:
        """`op`, made to run after every file operation submitted before it."""
        before, done = self._idle, threading.Event()
        self._idle = done

        def run() -> None:
            before.wait()
            try:
                op()
            finally:
                done.set()

        return run

    def _open(self, path: Path) -> BinaryIO:
        if path.parent.is_symlink():
            raise safefiles.link_refused(path.parent)
        if not path.parent.is_dir():
            # Not parents=True: a removed output directory must not come back half-empty.
            _retrying(
                "create directory",
                path.parent,
                functools.partial(path.parent.mkdir, mode=safefiles.DIR_MODE, exist_ok=True),
            )
            safefiles.fsync_dir(self.output_dir)
        partial = _partial(path)
        return _retrying(
            "create rejected line",
            partial,
            functools.partial(safefiles.create_file, partial, buffering=0),
        )

    def _seal(self, line: _Line, f: BinaryIO) -> None:
        # Written under a temporary name and renamed when whole: a `.rec` file is always
        # a complete line. An fsync is never retried: after a failed one the kernel may have
        # dropped the pages, and a later success would prove nothing.
        partial = _partial(line.path)
        try:
            os.fsync(f.fileno())
        except OSError as e:
            raise _failure("fsync rejected line", partial, e) from e
        line.file = None
        f.close()
        _retrying(
            "rename rejected line", line.path, functools.partial(os.replace, partial, line.path)
        )
        safefiles.fsync_dir(line.path.parent)

    def _append(self, line: _Line, f: BinaryIO, data: bytes) -> None:
        """Appends a piece; a failed write is cut back and retried whole."""
        at = line.size_on_disk

        def undo() -> None:
            os.ftruncate(f.fileno(), at)
            f.seek(at)

        _retrying(
            "write rejected line", _partial(line.path), functools.partial(_write_all, f, data), undo
        )
        line.size_on_disk = at + len(data)

    def _write_piece(self, line: _Line, piece: Rejected) -> None:
        """On a file thread: opens the file for a first piece, appends, seals after the last."""
        try:
            if piece.first:
                line.file = self._open(line.path)
            f = line.file
            if f is None:
                raise RuntimeError("rejected line continued without its first piece")
            self._append(line, f, piece.data)
            if piece.last:
                self._seal(line, f)
        except OSError:
            # The line now has a piece missing: it must never be sealed, so drop what it has.
            _discard(line)
            raise

    async def write(self, piece: Rejected) -> None:
        """Appends a piece of a rejected line (off the event loop); the last piece makes the file
        durable. A piece that fails raises its OSError and gives up its line: its `.partial` is
        removed, and its later pieces are ignored (no error raised again). Cancelled while the
        piece is being written, the line is given up too: its thread goes on, but nothing more
        of the line is written."""
        if piece.first:
            self.close()
            self._line = _Line(
                piece.offset, rejected_path(self.output_dir, piece.offset), piece.continues
            )
        line = self._line
        if line is None or line.offset != piece.offset:
            raise RuntimeError("rejected line continued without its first piece")
        if line.given_up:
            if piece.last and line.reported:
                # Its loss was raised already; one given up by a stop waits for give_up().
                self._line = None
            return
        op = self._in_turn(functools.partial(self._write_piece, line, piece))
        written = asyncio.get_running_loop().run_in_executor(THREADS, op)
        try:
            await written
        except asyncio.CancelledError:
            if written.cancelled() or written.exception() is not None:
                line.given_up = True
            else:
                # It ended just as the wait was cancelled: it is written.
                self._written(line, piece)
            raise
        except OSError:
            line.given_up = line.reported = True
            if piece.last:
                self._line = None
            raise
        self._written(line, piece)

    def _written(self, line: _Line, piece: Rejected) -> None:
        line.size += len(piece.data)
        if piece.last:
            self._line = None
            self.records += 1
            self.bytes += line.size
            self._report(line)

    def give_up(self) -> int | None:
        """Gives up the line being written, if any, without waiting: it is not finished, and its
        file is closed and its `.partial` removed once the operation running on it ends. Returns
        its offset, or None if no line was being written or its loss was already raised."""
        line, self._line = self._line, None
        if line is None:
            return None
        line.given_up = True
        THREADS.submit(self._in_turn(functools.partial(_discard, line)))
        return None if line.reported else line.offset

    def _report(self, line: _Line) -> None:
        if line.continues:
            # Rare, and the operator must hear of each one: never folded into a count.
            log.warning(
                "the continuation of a line stored before without its end (%d bytes at source "
                "offset %d) is kept in %s, not stored as a record",
                line.size,
                line.offset,
                line.path,
            )
            return
        offset, size = line.offset, line.size
        now = time.monotonic()
        if now - self._window_start > LOG_WINDOW_S:
            if self._unlogged:
                log.warning("%d more lines over the record limit were rejected", self._unlogged)
            self._window_start, self._logged_in_window, self._unlogged = now, 0, 0
        if self._logged_in_window < LOG_BURST:
            self._logged_in_window += 1
            log.warning(
                "line at source offset %d is %d bytes, over --max-record-bytes %d: kept in %s",
                offset,
                size,
                self.max_record_bytes,
                rejected_path(self.output_dir, offset),
            )
        else:
            self._unlogged += 1

    def close(self) -> None:
        """Gives up a line left unfinished (the reader stopped mid-line; it will be read again)."""
        self.give_up()
