"""The side file where a demo child says how far its reader has read and how many writes its
Python client has in flight. Written in place (one pwrite at offset 0) as the numbers change,
so it holds the last value however the process ends, a SIGKILL included."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROGRESS_FILE = "progress"


@dataclass(frozen=True, slots=True)
class Progress:
    """The side file's numbers."""

    # The generator's sequence number just past the last batch handed to the reader: records
    # 0..read_end-1 have been read (by this run or, after a restart, an earlier one).
    read_end: int
    # Writes of the Python client started and not yet finished (0 for the native client).
    inflight: int


class ProgressWriter:
    """Keeps the side file current; owned by the child for its whole life."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._read_end = 0
        self._inflight = 0
        self._write()

    def read_to(self, end_offset: int) -> None:
        """The reader is about to take records up to `end_offset`."""
        self._read_end = end_offset
        self._write()

    def inflight(self, writes: int) -> None:
        """The client now has `writes` writes in flight."""
        self._inflight = writes
        self._write()

    def _write(self) -> None:
        # Each number twice: a reader that catches the write half done sees two that differ,
        # and looks again.
        r, i = self._read_end, self._inflight
        os.pwrite(self._fd, b"%20d %20d %20d %20d\n" % (r, i, r, i), 0)


def read_progress(path: Path) -> Progress | None:
    """The side file's numbers, or None if it is missing or was caught mid-write."""
    try:
        fields = path.read_bytes().split()
    except FileNotFoundError:
        return None
    if len(fields) != 4 or fields[:2] != fields[2:] or not all(f.isdigit() for f in fields):
        return None
    return Progress(int(fields[0]), int(fields[1]))
