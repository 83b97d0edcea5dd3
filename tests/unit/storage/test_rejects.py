"""Rejected lines: a line whose write fails part-way, and rejected/ after a crash."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from shovel import safefiles
from shovel.batches import Rejected
from shovel.storage.rejects import RejectWriter, recover_rejected, rejected_path
from tests.helpers.failing_writes import fail_partial_writes


def test_a_failed_piece_gives_up_its_line_which_is_never_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_partial_writes(monkeypatch, {2})
    w = RejectWriter(tmp_path, 10)

    async def run() -> None:
        await w.write(Rejected(5, b"x" * 50, first=True, last=False))
        with pytest.raises(OSError, match=r"write rejected line failed for .*: Read-only file"):
            await w.write(Rejected(5, b"y" * 50, first=False, last=False))
        # The rest of that line is not written, and its failure is not raised again.
        await w.write(Rejected(5, b"z" * 50 + b"\n", first=False, last=True))

    asyncio.run(run())
    assert sorted((tmp_path / "rejected").iterdir()) == [], "a line with a piece missing was kept"
    assert (w.records, w.bytes) == (0, 0)

    # The next line is kept as usual.
    asyncio.run(w.write(Rejected(300, b"n" * 20 + b"\n", first=True, last=True)))
    assert rejected_path(tmp_path, 300).read_bytes() == b"n" * 20 + b"\n"
    assert sorted(p.name for p in (tmp_path / "rejected").iterdir()) == [f"{300:020d}.rec"]
    assert (w.records, w.bytes) == (1, 21)


class FullOnce:
    """The first write of every file fails with ENOSPC after writing part of its data (a
    disk that was full for a moment)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.failed = False

    def write(self, data: bytes) -> int:
        if not self.failed:
            self.failed = True
            self._f.write(bytes(data)[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_a_write_that_fails_with_an_error_that_can_pass_is_cut_back_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_create = safefiles.create_file
    monkeypatch.setattr(
        safefiles, "create_file", lambda path, **options: FullOnce(real_create(path, **options))
    )
    w = RejectWriter(tmp_path, 10)
    line = b"x" * 30 + b"y" * 30 + b"\n"

    async def run() -> None:
        await w.write(Rejected(5, line[:30], first=True, last=False))
        await w.write(Rejected(5, line[30:], first=False, last=True))

    asyncio.run(run())
    assert rejected_path(tmp_path, 5).read_bytes() == line, "the torn write was not cut back"
    partial = tmp_path / "rejected" / f"{5:020d}.rec.partial"
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == [
        f"write rejected line failed for {partial}: No space left on device [ENOSPC]; "
        "retrying (1/6) in 50 ms"
    ]


# --- rejected/ after a crash ------------------------------------------------------------------


def rec(offset: int) -> str:
    return f"{offset:020d}.rec"


def make_rejected(out: Path, files: dict[str, bytes]) -> Path:
    directory = out / "rejected"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_recovery_of_a_replayable_source_removes_what_will_be_read_again(tmp_path: Path) -> None:
    d = make_rejected(
        tmp_path,
        {rec(10): b"committed\n", rec(100): b"at the offset\n", rec(500): b"past it\n",
         f"{rec(700)}.partial": b"cut short", f"{rec(5)}.uncommitted": b"kept aside before\n",
         "notes.txt": b"not ours\n"},
    )  # fmt: skip
    notes = recover_rejected(tmp_path, 100, replayable=True)
    assert contents(d) == {
        rec(10): b"committed\n",
        f"{rec(5)}.uncommitted": b"kept aside before\n",
        "notes.txt": b"not ours\n",
    }
    why = "is past the committed offset 100 and will be read again"
    assert notes == [
        f"removed {d / rec(100)}: the line at source offset 100 {why}",
        f"removed {d / rec(500)}: the line at source offset 500 {why}",
        f"removed {d / rec(700)}.partial, left by an interrupted write of a rejected line",
    ]


def test_recovery_of_a_stream_keeps_its_lines_aside_under_names_not_taken(tmp_path: Path) -> None:
    d = make_rejected(
        tmp_path,
        {rec(10): b"committed\n", rec(100): b"only copy\n", f"{rec(100)}.uncommitted": b"older\n",
         f"{rec(100)}.uncommitted.1": b"older still\n", f"{rec(300)}.partial": b"cut short"},
    )  # fmt: skip
    notes = recover_rejected(tmp_path, 50, replayable=False)
    assert contents(d) == {
        rec(10): b"committed\n",
        f"{rec(100)}.uncommitted": b"older\n",
        f"{rec(100)}.uncommitted.1": b"older still\n",
        f"{rec(100)}.uncommitted.2": b"only copy\n",
    }
    assert notes == [
        f"kept {d / rec(100)} as {d / rec(100)}.uncommitted.2: the line at source offset 100 is "
        "past the committed offset 50 and this source cannot be read again",
        f"removed {d / rec(300)}.partial, left by an interrupted write of a rejected line",
    ]
    # Run again (a crash during recovery): nothing more to do, nothing lost.
    assert recover_rejected(tmp_path, 50, replayable=False) == []
    assert contents(d)[f"{rec(100)}.uncommitted.2"] == b"only copy\n"


def test_recovery_without_a_rejected_directory_has_nothing_to_do(tmp_path: Path) -> None:
    assert recover_rejected(tmp_path, 0, replayable=True) == []
    assert not (tmp_path / "rejected").exists()


def test_recovery_raises_what_stops_it(tmp_path: Path) -> None:
    (tmp_path / "rejected").write_bytes(b"not a directory")
    with pytest.raises(NotADirectoryError):
        recover_rejected(tmp_path, 0, replayable=True)
