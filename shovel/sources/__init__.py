"""Sources of records: the `--source` syntax, streams (stdin, a FIFO), the deterministic
generator, and `open_source`, which picks one (files live in files.py).

Every source yields `Batch`es of whole records, cut at newlines (see records.py), with the
source offset just past the batch, and `Rejected` pieces for lines over the record limit.
Offsets: for a file, the position in everything read into the output directory (see
files.py); a stream's byte count continued from the committed offset (a stream cannot be
re-read, so each run appends what it reads); the generator's next sequence number. The first
batch of a run carries the source's descriptor (identity.py) for the checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path

from shovel._native import ReadFile
from shovel.batches import Batch, Piece
from shovel.sources.api import DaemonThreads, Source, SourceError, SourceMismatch
from shovel.sources.file import FileSource, FollowConfig
from shovel.sources.identity import (
    DescriptorError,
    GeneratorOrigin,
    Origin,
    StreamOrigin,
    decode,
    encode,
    kind_of,
)
from shovel.sources.nats.url import SCHEME as NATS_SCHEME
from shovel.sources.nats.url import NatsSpec, parse_nats
from shovel.sources.records import RecordSplitter

__all__ = [
    "DaemonThreads",
    "FileSource",
    "FileSpec",
    "FollowConfig",
    "GeneratorSource",
    "GeneratorSpec",
    "NatsSpec",
    "Source",
    "SourceError",
    "SourceMismatch",
    "SourceSpec",
    "StdinSpec",
    "StreamSource",
    "generated_record",
    "open_source",
    "parse_source",
]

log = logging.getLogger(__name__)


def _stored_origin(descriptor: str, expected: type, now: str) -> Origin | None:
    """The checkpoint's origin when it is of the `expected` kind (or absent); otherwise
    SourceMismatch, naming both."""
    try:
        origin = decode(descriptor)
    except DescriptorError as e:
        raise SourceMismatch(f"the checkpoint's record of its source is unreadable: {e}") from e
    if origin is not None and not isinstance(origin, expected):
        raise SourceMismatch(
            f"this output directory holds records from {kind_of(origin)}, and the source now "
            f"is {now}: refusing to mix them (use a new --output-dir for this source)"
        )
    return origin


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


SourceSpec = FileSpec | StdinSpec | GeneratorSpec | NatsSpec


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
    if text.startswith(NATS_SCHEME):
        return parse_nats(text)
    path = text.removeprefix("file:")
    if not path:
        raise ValueError("empty file path")
    return FileSpec(Path(path))


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
        self._origin = encode(StreamOrigin(description))
        self._splitter: RecordSplitter | None = None
        # Pieces cut from consumed bytes but not yet handed to the reader.
        self._unhanded: deque[Piece] = deque()

    def resume(self, committed_offset: int, descriptor: str) -> str:
        _stored_origin(descriptor, StreamOrigin, f"a stream ({self.description})")
        # Nothing is resumed: a stream cannot be read twice. Its offsets go on counting from the
        # committed one so that they keep growing across runs.
        return "appending what it delivers (a stream is never re-read)"

    def _first(self, pieces: list[Piece]) -> list[Piece]:
        """Stamps the first batch of the run with the stream's descriptor."""
        for i, piece in enumerate(pieces):
            if isinstance(piece, Batch) and self._origin:
                pieces[i] = replace(piece, source=self._origin)
                self._origin = ""
                break
        return pieces

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
                self._unhanded.extend(self._first(splitter.feed(chunk)))
                while self._unhanded:
                    yield self._unhanded.popleft()
        finally:
            if self.owns_fd:
                os.close(self.fd)
            else:
                os.set_blocking(self.fd, was_blocking)
        self._unhanded.extend(self._first(splitter.finish()))
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
            tail += self._first(self._splitter.finish())
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

    def resume(self, committed_offset: int, descriptor: str) -> str:
        _stored_origin(descriptor, GeneratorOrigin, "the generator")
        return f"resuming at offset {committed_offset}"

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        seq = start_offset
        started = loop.time()
        produced = 0
        origin: str | None = encode(GeneratorOrigin())
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
            yield Batch(data, n, seq, origin)
            origin = None

    def stop_tail(self) -> list[Piece]:
        return []


def open_source(
    spec: SourceSpec,
    chunk_bytes: int,
    max_record_bytes: int,
    generate_rate: float,
    follow: FollowConfig | None = None,
    *,
    queue_max_batches: int = 8,
    shutdown_timeout_s: float = 20.0,
    output_dir: Path | None = None,
) -> Source:
    """The source for `spec`; raises SourceError when a file cannot be used. `follow` applies
    to a file (the caller checks that it is one); the queue size and the shutdown timeout size
    a NATS consumer (natssource.py), which records its stops in `output_dir`."""
    if isinstance(spec, NatsSpec):
        # Imported here: the NATS client is needed only by this source.
        from shovel.sources.nats.source import NatsSource  # noqa: PLC0415

        if spec.creds is not None and not os.access(spec.creds, os.R_OK):
            raise SourceError(f"cannot read the NATS credentials file {spec.creds}")
        return NatsSource(spec, queue_max_batches, shutdown_timeout_s, output_dir)
    if isinstance(spec, GeneratorSpec):
        return GeneratorSource(spec.count, generate_rate)
    if isinstance(spec, StdinSpec):
        return StreamSource(0, "stdin", chunk_bytes, max_record_bytes, owns_fd=False)
    return _open_path(spec.path, chunk_bytes, max_record_bytes, follow)


def _open_path(
    path: Path, chunk_bytes: int, max_record_bytes: int, follow: FollowConfig | None
) -> Source:
    """A path as a source: a file (followed or not), or a stream."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if follow is not None and path.parent.is_dir():
            # Like tail -F: wait for it to appear.
            return FileSource(path, chunk_bytes, max_record_bytes, follow)
        raise SourceError(f"cannot read source {path}: No such file or directory") from None
    except OSError as e:
        raise SourceError(f"cannot read source {path}: {e.strerror}") from e
    if stat.S_ISDIR(mode):
        raise SourceError(f"source {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        if follow is not None:
            kind = "a named pipe" if stat.S_ISFIFO(mode) else "a device or a socket"
            raise SourceError(
                f"--follow reads a regular file, and {path} is {kind}: without --follow it "
                "is read as a stream"
            )
        return _stream_of(path, chunk_bytes, max_record_bytes)
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read source {path}: permission denied")
    pseudo = _pseudo_filesystem(path)
    if pseudo is None:
        return FileSource(path, chunk_bytes, max_record_bytes, follow)
    if follow is not None:
        raise SourceError(
            f"--follow cannot follow {path}: it is on {pseudo}, a pseudo filesystem whose files "
            "report no true size and make their content up at each read; without --follow it "
            "is read once, as a stream"
        )
    # Read once to its end, as a stream: its size and first bytes say nothing a restart could
    # resume from.
    return _stream_of(path, chunk_bytes, max_record_bytes)


def _pseudo_filesystem(path: Path) -> str | None:
    """The pseudo filesystem `path` is on (procfs, sysfs, ...), or None."""
    try:
        file = ReadFile(path)
    except OSError as e:
        raise SourceError(f"cannot open source {path}: {e.strerror}") from e
    try:
        return file.pseudo_filesystem()
    except OSError as e:
        raise SourceError(f"cannot tell which filesystem {path} is on: {e.strerror}") from e
    finally:
        file.close()


def _stream_of(path: Path, chunk_bytes: int, max_record_bytes: int) -> StreamSource:
    """`path` read as a stream, once, to its end."""
    # A FIFO opened non-blocking reads as ended while no writer has it open: start the
    # writer first (this is documented in --help).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise SourceError(f"cannot open source {path}: {e.strerror}") from e
    return StreamSource(fd, f"stream {path}", chunk_bytes, max_record_bytes, owns_fd=True)
