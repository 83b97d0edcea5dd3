"""Rejected lines: a line whose write fails part-way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shovel.batches import Rejected
from shovel.rejects import RejectWriter, rejected_path
from tests.test_pipeline import fail_partial_writes


def test_a_failed_piece_gives_up_its_line_which_is_never_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_partial_writes(monkeypatch, {2})
    w = RejectWriter(tmp_path, 10)

    async def run() -> None:
        await w.write(Rejected(5, b"x" * 50, first=True, last=False))
        with pytest.raises(OSError, match="No space left on device"):
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
