"""A stream as a source: standard input, a named pipe, a device, or a file on a pseudo
filesystem, read once to its end. A stream cannot be read twice, so each run appends what it
reads; its offsets count the bytes read, going on from the committed offset."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from shovel.batches import Batch, Piece
from shovel.oserrors import reason
from shovel.sources.api import Source, SourceError, SourceOptions, stored_origin
from shovel.sources.identity import StreamOrigin, encode
from shovel.sources.records import RecordSplitter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StdinSpec:
    """`-`: standard input."""

    followable: ClassVar[bool] = False
    reads_stdin: ClassVar[bool] = True

    def open(self, options: SourceOptions) -> Source:
        """Standard input, left open (and blocking as it was) when the run ends."""
        return StreamSource(
            0, "stdin", options.chunk_bytes, options.max_record_bytes, owns_fd=False
        )


def parse_stdin(text: str) -> StdinSpec | None:
    """`-`, or None."""
    return StdinSpec() if text == "-" else None


class StreamSource(Source):
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

    def cap_record_bytes(self, limit: int) -> None:
        """Lines over `limit` bytes go to rejected/ (a sink's largest message)."""
        self.max_record_bytes = min(self.max_record_bytes, limit)

    def resume(self, committed_offset: int, descriptor: str) -> str:
        stored_origin(descriptor, StreamOrigin, f"a stream ({self.description})")
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


def stream_of(path: Path, chunk_bytes: int, max_record_bytes: int) -> StreamSource:
    """`path` read as a stream, once, to its end."""
    # A FIFO opened non-blocking reads as ended while no writer has it open: start the
    # writer first (this is documented in --help).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise SourceError(f"cannot open it: {reason(e)}") from e
    return StreamSource(fd, f"stream {path}", chunk_bytes, max_record_bytes, owns_fd=True)
