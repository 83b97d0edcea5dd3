"""What every benchmark module shares: units, the error that fails a run, progress lines,
clearing output between runs, and percentiles."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

MiB = 1024 * 1024


class BenchError(Exception):
    """Something that makes the figures meaningless: a failed or incorrect run."""


def progress(line: str) -> None:
    """A progress line, on stderr so that stdout holds only the result."""
    print(line, file=sys.stderr, flush=True)


def remove(path: Path) -> None:
    """Removes a file or directory tree if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fresh(out: Path) -> None:
    """Removes a previous output and flushes all dirty data (a plain sync(2), no root needed),
    so that no run pays for the writeback or the deletion left by the one before it."""
    remove(out)
    os.sync()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolated linearly between the two nearest
    ranks (so the p99 of 50 values lies between the largest two)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def verdict(ok: bool) -> str:
    """How a target is reported."""
    return "met" if ok else "MISSED"
