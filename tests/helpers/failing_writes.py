"""Rejected lines' files whose writes fail on cue: a disk that turns read-only at a chosen
write."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import pytest

from shovel import safefiles


class FailingWrites:
    """A file whose writes numbered in `failing` (from 1) raise EROFS: a disk that turns
    read-only at a chosen moment (an error no retry can cure)."""

    def __init__(self, f: BinaryIO, failing: set[int]) -> None:
        self._f = f
        self._failing = failing
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes in self._failing:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> FailingWrites:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._f.close()


def fail_partial_writes(monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> None:
    """Files opened under a `.partial` name fail their writes numbered in `failing`."""
    real_create = safefiles.create_file

    def create(path: Path, **options: Any) -> Any:
        assert path.name.endswith(".partial"), path
        return FailingWrites(real_create(path, **options), failing)

    monkeypatch.setattr(safefiles, "create_file", create)
