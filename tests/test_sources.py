"""Record splitting, source syntax, and each source's offsets."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from shovel.batches import Batch, Piece
from shovel.sources import (
    FileSource,
    FileSpec,
    GeneratorSource,
    GeneratorSpec,
    SourceError,
    StdinSpec,
    StreamSource,
    generated_record,
    open_source,
    parse_source,
)


def test_parse_source_forms() -> None:
    assert parse_source("-") == StdinSpec()
    assert parse_source("generate") == GeneratorSpec(None)
    assert parse_source("generate:12") == GeneratorSpec(12)
    assert parse_source("file:/x/y") == FileSpec(Path("/x/y"))
    assert parse_source("data.txt") == FileSpec(Path("data.txt"))
    for bad in ("generate:", "generate:-1", "generate:1e3", "file:"):
        with pytest.raises(ValueError, match=r"generate:N|empty file path"):
            parse_source(bad)


def test_generated_records_are_stable_and_about_100_bytes() -> None:
    assert generated_record(7) == generated_record(7)
    assert generated_record(7) != generated_record(8)
    assert generated_record(0).startswith(b'{"seq":0,')
    assert 80 <= len(generated_record(123_456)) <= 120
    assert generated_record(5).count(b"\n") == 1


async def collect(source: GeneratorSource | FileSource | StreamSource, start: int) -> list[Batch]:
    pieces: list[Piece] = [p async for p in source.pieces(start)]
    batches = [p for p in pieces if isinstance(p, Batch)]
    assert len(batches) == len(pieces), "no line here is over the limit"
    return batches


def test_generator_resumes_at_a_sequence_number() -> None:
    batches = asyncio.run(collect(GeneratorSource(2500, rate=0), 1200))
    assert b"".join(b.data for b in batches) == b"".join(
        generated_record(i) for i in range(1200, 2500)
    )
    assert batches[-1].end_offset == 2500
    assert sum(b.records for b in batches) == 1300


def test_file_source_resumes_by_seeking(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = b"".join(b"r%d\n" % i for i in range(5000))
    path.write_bytes(data)
    start = data.index(b"r100\n")
    batches = asyncio.run(collect(FileSource(path, 4096, 1 << 20), start))
    assert b"".join(b.data for b in batches) == data[start:]
    assert batches[-1].end_offset == len(data)


def test_file_shorter_than_committed_offset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"short\n")
    with pytest.raises(SourceError, match="truncated or replaced"):
        asyncio.run(collect(FileSource(path, 4096, 1 << 20), 100))


def test_stream_source_reads_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    payload = b"".join(b"p%d\n" % i for i in range(20_000)) + b"tail"

    def feed() -> None:
        # More than a pipe buffer holds: the reader must wait for readability in between.
        with os.fdopen(write_fd, "wb") as w:
            w.write(payload)

    writer = threading.Thread(target=feed)
    writer.start()
    batches = asyncio.run(collect(StreamSource(read_fd, "pipe", 8192, 1 << 20, owns_fd=True), 7))
    writer.join()
    assert b"".join(b.data for b in batches) == payload + b"\n"
    assert batches[-1].end_offset == 7 + len(payload)


def test_open_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cannot read source .*missing"):
        open_source(FileSpec(tmp_path / "missing"), 4096, 1 << 20, 0)
    with pytest.raises(SourceError, match="is a directory"):
        open_source(FileSpec(tmp_path), 4096, 1 << 20, 0)


def test_a_paced_generator_batches_instead_of_dripping() -> None:
    async def run() -> list[Batch]:
        return await asyncio.wait_for(collect(GeneratorSource(300, rate=1000), 0), 30)

    batches = asyncio.run(run())
    assert sum(b.records for b in batches) == 300
    # About 10 ms of records per wake-up at 1000/s, not one record per batch.
    assert len(batches) < 100, len(batches)
