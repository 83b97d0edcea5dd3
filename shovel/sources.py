"""Sources of records: a regular file, a stream (stdin, a FIFO), or a deterministic generator.

Every source yields `Batch`es of whole records, cut at newlines (see records.py), with the
source offset just past the batch, and `Rejected` pieces for lines over the record limit.
Offsets: a file's byte position; a stream's byte count continued from the
committed offset (a stream cannot be re-read, so each run appends what it reads); the
generator's next sequence number. A last line without a newline is a record and gets one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, Protocol, TypeVar

import aiofiles

from shovel.batches import Batch, Piece
from shovel.records import RecordSplitter

log = logging.getLogger(__name__)


class SourceError(Exception):
    """The source cannot be opened or does not match the committed offset."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    """`PATH` or `file:PATH`."""

    path: Path


@dataclass(frozen=True, slots=True)
class StdinSpec:
    """`-`: standard input."""


@dataclass(frozen=True, slots=True)
class GeneratorSpec:
    """`generate` (endless) or `generate:N` (exactly N records)."""

    count: int | None


SourceSpec = FileSpec | StdinSpec | GeneratorSpec


def parse_source(text: str) -> SourceSpec:
    """Parses the `--source` syntax; raises ValueError with a reason."""
    if text == "-":
        return StdinSpec()
    if text == "generate":
        return GeneratorSpec(None)
    if text.startswith("generate:"):
        raw = text.removeprefix("generate:")
        if not raw.isdigit():
            raise ValueError(f"generate:N needs a whole number N >= 0, got {raw!r}")
        return GeneratorSpec(int(raw))
    path = text.removeprefix("file:")
    if not path:
        raise ValueError("empty file path")
    return FileSpec(Path(path))


class Source(Protocol):
    """Something that yields pieces (batches, and lines too long to store) from an offset."""

    description: str
    replayable: bool

    def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        """Pieces from `start_offset` on, in source order; ends with a finite source."""
        ...

    def stop_tail(self) -> list[Piece]:
        """After the reader was stopped: the pieces of data already consumed but not yet
        yielded (a partial last line). Empty for a replayable source, which reads it again."""
        ...


_P = ParamSpec("_P")
_T = TypeVar("_T")


class DaemonThreads(Executor):
    """Runs each call on a daemon thread of its own. File reads go through it so that a read
    stuck on a hung filesystem holds up neither the stop sequence nor the interpreter's exit
    (the default executor's threads are joined at exit)."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:
                future.set_exception(e)

        threading.Thread(target=run, name="shovel-read", daemon=True).start()
        return future


class FileSource:
    """A regular file, read in large chunks through aiofiles; resumes by seeking."""

    replayable = True

    def __init__(self, path: Path, chunk_bytes: int, max_record_bytes: int) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.max_record_bytes = max_record_bytes
        self.description = f"file {path}"

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        size = (await asyncio.to_thread(self.path.stat)).st_size
        if size < start_offset:
            raise SourceError(
                f"{self.path} holds {size} bytes but the committed offset is {start_offset}: "
                "the file was truncated or replaced since the last run; refusing to resume at a "
                "wrong position (use a new output directory to store it from the start)"
            )
        splitter = RecordSplitter(start_offset, self.max_record_bytes)
        async with aiofiles.open(self.path, "rb", executor=DaemonThreads()) as f:
            await f.seek(start_offset)
            # A read cancelled mid-way still completes in its thread and moves the file
            # position; that is harmless because offsets come from the splitter, and a
            # cancelled reader never reads again.
            while chunk := await f.read(self.chunk_bytes):
                for piece in splitter.feed(chunk):
                    yield piece
        for piece in splitter.finish():
            yield piece

    def stop_tail(self) -> list[Piece]:
        return []


class StreamSource:
    """A non-seekable stream (stdin, a FIFO), read from a non-blocking descriptor.

    No thread is involved: the loop waits for readability, then `os.read` runs synchronously,
    so a cancellation can only land while nothing has been consumed.
    """

    replayable = False

    def __init__(
        self, fd: int, description: str, chunk_bytes: int, max_record_bytes: int, owns_fd: bool
    ) -> None:
        self.fd = fd
        self.max_record_bytes = max_record_bytes
        self.description = description
        self.chunk_bytes = chunk_bytes
        self.owns_fd = owns_fd
        self._splitter: RecordSplitter | None = None
        # Pieces cut from consumed bytes but not yet handed to the reader.
        self._unhanded: deque[Piece] = deque()

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        splitter = self._splitter = RecordSplitter(start_offset, self.max_record_bytes)
        was_blocking = os.get_blocking(self.fd)
        os.set_blocking(self.fd, False)
        try:
            while True:
                try:
                    chunk = os.read(self.fd, self.chunk_bytes)
                except BlockingIOError:
                    await self._readable()
                    continue
                if not chunk:
                    break
                self._unhanded.extend(splitter.feed(chunk))
                while self._unhanded:
                    yield self._unhanded.popleft()
        finally:
            if self.owns_fd:
                os.close(self.fd)
            else:
                os.set_blocking(self.fd, was_blocking)
        self._unhanded.extend(splitter.finish())
        while self._unhanded:
            yield self._unhanded.popleft()

    def stop_tail(self) -> list[Piece]:
        # Bytes taken from a stream cannot be read again: a stop ends this stream for us, so
        # what was cut but not handed over, and the partial last line, are kept the way the
        # end of input keeps them.
        tail = list(self._unhanded)
        self._unhanded.clear()
        if self._splitter is not None:
            partial = self._splitter.carried
            tail += self._splitter.finish()
            if partial:
                log.warning(
                    "%s stopped mid-line: its incomplete last line (%d bytes) is kept as a record",
                    self.description,
                    partial,
                )
        return tail


# The generator wakes at most this often when paced.
PACING_TICK_S = 0.01


def generated_record(seq: int) -> bytes:
    """Record `seq` of the generator: the same bytes in every run (about 100 bytes)."""
    digest = hashlib.blake2b(seq.to_bytes(8, "big"), digest_size=16).hexdigest()
    return b'{"seq":%d,"source":"shovel-generator","payload":"%s"}\n' % (seq, digest.encode())


class GeneratorSource:
    """Deterministic records, endless or exactly `count`, optionally paced to `rate` per s."""

    replayable = True

    def __init__(self, count: int | None, rate: float, batch_records: int = 1000) -> None:
        self.count = count
        self.rate = rate
        self.batch_records = batch_records
        limit = "endless" if count is None else f"{count} records"
        pace = "as fast as possible" if rate == 0 else f"{rate:g} records/s"
        self.description = f"generator ({limit}, {pace})"

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        seq = start_offset
        started = loop.time()
        produced = 0
        while self.count is None or seq < self.count:
            n = (
                self.batch_records
                if self.count is None
                else min(self.batch_records, self.count - seq)
            )
            if self.rate > 0:
                due = int((loop.time() - started) * self.rate) + 1 - produced
                if due <= 0:
                    # Pacing, not synchronisation: wait until the next record is due, but
                    # at least a tick, so that a modest rate still makes batches, not drips.
                    wait_s = produced / self.rate - (loop.time() - started)
                    await asyncio.sleep(max(wait_s, PACING_TICK_S))
                    continue
                n = min(n, due)
            data = b"".join(generated_record(i) for i in range(seq, seq + n))
            seq += n
            produced += n
            yield Batch(data, n, seq)

    def stop_tail(self) -> list[Piece]:
        return []


def open_source(
    spec: SourceSpec, chunk_bytes: int, max_record_bytes: int, generate_rate: float
) -> Source:
    """The source for `spec`; raises SourceError when a file cannot be used."""
    if isinstance(spec, GeneratorSpec):
        return GeneratorSource(spec.count, generate_rate)
    if isinstance(spec, StdinSpec):
        return StreamSource(0, "stdin", chunk_bytes, max_record_bytes, owns_fd=False)
    try:
        mode = spec.path.stat().st_mode
    except OSError as e:
        raise SourceError(f"cannot read source {spec.path}: {e.strerror}") from e
    if stat.S_ISREG(mode):
        if not os.access(spec.path, os.R_OK):
            raise SourceError(f"cannot read source {spec.path}: permission denied")
        return FileSource(spec.path, chunk_bytes, max_record_bytes)
    if stat.S_ISDIR(mode):
        raise SourceError(f"source {spec.path} is a directory, not a file")
    # A FIFO opened non-blocking reads as ended while no writer has it open: start the
    # writer first (this is documented in --help).
    try:
        fd = os.open(spec.path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise SourceError(f"cannot open source {spec.path}: {e.strerror}") from e
    return StreamSource(fd, f"stream {spec.path}", chunk_bytes, max_record_bytes, owns_fd=True)
