"""Lines too long to be records: kept whole in OUTPUT/rejected/, durably, never dropped.

Each rejected line goes to `rejected/<source offset, 20 digits>.rec`. The file is fsynced (and
its directory) before the reader queues anything after it, so the committed offset only moves
past a rejected line once the line is safe. A line read again after a crash rewrites the same
file from the start, so replays leave no duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO

from shovel.batches import Rejected

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"
# At most this many rejected lines are logged one by one per window; the rest are counted.
LOG_BURST = 10
LOG_WINDOW_S = 60.0


def rejected_path(output_dir: Path, offset: int) -> Path:
    """Where the line starting at source offset `offset` is kept."""
    return output_dir / REJECTED_DIR / f"{offset:020d}.rec"


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RejectWriter:
    """Writes rejected lines; counts them; logs each (rate-limited) with its offset."""

    def __init__(self, output_dir: Path, max_record_bytes: int) -> None:
        self.output_dir = output_dir
        self.max_record_bytes = max_record_bytes
        self.records = 0
        self.bytes = 0
        self._file: BinaryIO | None = None
        self._path = output_dir
        self._size = 0
        self._window_start = 0.0
        self._logged_in_window = 0
        self._unlogged = 0

    def _open(self, offset: int) -> BinaryIO:
        path = rejected_path(self.output_dir, offset)
        if not path.parent.is_dir():
            # Not parents=True: a removed output directory must not come back half-empty.
            path.parent.mkdir()
            _fsync_dir(self.output_dir)
        self._path = path
        return _partial(path).open("wb")

    def _seal(self, f: BinaryIO) -> None:
        # Written under a temporary name and renamed when whole: a `.rec` file is always
        # a complete line.
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(_partial(self._path), self._path)
        _fsync_dir(self._path.parent)

    async def write(self, piece: Rejected) -> None:
        """Appends a piece of a rejected line; the last piece makes the file durable."""
        if piece.first:
            self.close()
            self._file = await asyncio.to_thread(self._open, piece.offset)
            self._size = 0
        f = self._file
        if f is None:
            raise RuntimeError("rejected line continued without its first piece")
        if piece.data:
            self._size += len(piece.data)
            await asyncio.to_thread(f.write, piece.data)
        if piece.last:
            await asyncio.to_thread(self._seal, f)
            self._file = None
            self.records += 1
            self.bytes += self._size
            self._report(piece.offset, self._size)

    def write_now(self, piece: Rejected) -> None:
        """`write`, blocking: for the end of a stream that was stopped mid-line."""
        if piece.first:
            self.close()
            self._file = self._open(piece.offset)
            self._size = 0
        if self._file is None:
            raise RuntimeError("rejected line continued without its first piece")
        self._file.write(piece.data)
        self._size += len(piece.data)
        if piece.last:
            self._seal(self._file)
            self._file = None
            self.records += 1
            self.bytes += self._size
            self._report(piece.offset, self._size)

    def _report(self, offset: int, size: int) -> None:
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
        """Closes a line left unfinished (the reader stopped mid-line; it will be read again)."""
        if self._file is not None:
            self._file.close()
            self._file = None
