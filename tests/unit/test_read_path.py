"""The native read path: a file read in chunks into reused buffers, cut into batches whose
buffers the storage client takes over without a copy, byte-exact end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shovel._native import ReadFile, Records
from shovel.batches import Batch
from shovel.sources.records import RecordSplitter
from shovel.storage import Storage, StorageConfig
from tests.helpers import stored_bytes


def storage_config(out: Path) -> StorageConfig:
    return StorageConfig(
        directory=out,
        segment_max_bytes=1 << 20,
        fsync_interval_ms=5,
        fsync_max_bytes=256 << 10,
        max_inflight_bytes=1 << 20,
    )


def test_a_file_read_in_chunks_is_stored_byte_for_byte(tmp_path: Path) -> None:
    # Lines of many lengths, one over the limit, chunks that cut lines anywhere, and a last
    # line without a newline: the stored bytes are the kept lines, in order, nothing else.
    lines = [b"%d:" % i + b"x" * (i * 37 % 300) + b"\n" for i in range(5000)]
    lines[1234] = b"y" * 5000 + b"\n"
    source = tmp_path / "in"
    source.write_bytes(b"".join(lines) + b"tail")
    out = tmp_path / "out"

    async def run() -> int:
        storage = await Storage.open(storage_config(out))
        splitter = RecordSplitter(0, 1000)
        file = ReadFile(source)
        rejected = b""
        records = 0
        try:
            while chunk := file.read(4099):
                pieces = splitter.feed(chunk)
                for piece in pieces:
                    if isinstance(piece, Batch):
                        records += piece.records
                        await storage.write(piece)
                    else:
                        rejected += piece.data
            for piece in splitter.finish():
                assert isinstance(piece, Batch)
                records += piece.records
                await storage.write(piece)
        finally:
            file.close()
        await storage.close(30)
        assert rejected == lines[1234]
        return records

    assert asyncio.run(run()) == 5000
    kept = lines[:1234] + lines[1235:]
    assert stored_bytes(out) == b"".join(kept) + b"tail\n"


def test_records_are_taken_over_once(tmp_path: Path) -> None:
    splitter = RecordSplitter(0, 100)
    (batch,) = splitter.feed(b"a\nb\n")
    assert isinstance(batch, Batch)
    assert isinstance(batch.data, Records)
    assert (bytes(batch.data), len(batch.data), batch.records) == (b"a\nb\n", 4, 2)

    async def run() -> None:
        storage = await Storage.open(storage_config(tmp_path / "out"))
        try:
            await storage.write(batch)
            # The buffers are the client's now: no copy is left behind to read or resubmit.
            with pytest.raises(ValueError, match="handed to storage"):
                bytes(batch.data)
            with pytest.raises(ValueError, match="already handed to storage"):
                await storage.write(batch)
        finally:
            await storage.close(30)

    asyncio.run(run())
    assert stored_bytes(tmp_path / "out") == b"a\nb\n"


def test_a_chunk_is_fed_once_and_its_first_bytes_can_be_looked_at(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.write_bytes(b"\nhello\nworld")
    file = ReadFile(source)
    file.seek(0)
    chunk = file.read(1 << 20)
    assert len(chunk) == 12
    assert chunk.bytes_at(0, 1) == b"\n"
    assert chunk.bytes_at(7, 100) == b"world"
    splitter = RecordSplitter(0, 100)
    # Skipping the leading newline, as a follow does after an unfinished line was stored.
    (batch,) = splitter.feed(chunk, skip=1)
    assert isinstance(batch, Batch)
    assert (bytes(batch.data), batch.end_offset) == (b"hello\n", 7)
    with pytest.raises(ValueError, match="already fed"):
        splitter.feed(chunk)
    # Inside a line nothing may be skipped: those bytes belong to a record.
    assert splitter.feed(b"partial") == []
    with pytest.raises(ValueError, match="only between lines"):
        splitter.feed(b"\nrest\n", skip=1)
    assert splitter.offset == 7
    assert len(file.read(10)) == 0, "the end of the file is an empty chunk"
    file.close()
    assert file.closed
    with pytest.raises(ValueError, match="closed"):
        file.fileno()


def test_opening_a_missing_file_raises_the_matching_os_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as caught:
        ReadFile(missing)
    assert caught.value.filename == str(missing)
    assert caught.value.strerror == "No such file or directory"
    with pytest.raises(IsADirectoryError):
        ReadFile(tmp_path).read(10)
