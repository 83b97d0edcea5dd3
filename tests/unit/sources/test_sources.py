"""Record splitting, source syntax, and each source's offsets."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from shovel.batches import Batch, Piece
from shovel.sources import (
    FileSource,
    FileSpec,
    FollowConfig,
    GeneratorSource,
    GeneratorSpec,
    SourceError,
    SourceMismatch,
    SourceOptions,
    StdinSpec,
    StreamSource,
    generated_record,
    identity,
    parse_source,
)
from shovel.sources import file as file_module


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


async def collect(
    source: GeneratorSource | FileSource | StreamSource, start: int, descriptor: str = ""
) -> list[Batch]:
    source.resume(start, descriptor)
    pieces: list[Piece] = [p async for p in source.pieces(start)]
    batches = [p for p in pieces if isinstance(p, Batch)]
    assert len(batches) == len(pieces), "no line here is over the limit"
    return batches


def test_generator_resumes_at_a_sequence_number() -> None:
    batches = asyncio.run(collect(GeneratorSource(2500, rate=0), 1200))
    assert b"".join(bytes(b.data) for b in batches) == b"".join(
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
    assert b"".join(bytes(b.data) for b in batches) == data[start:]
    assert batches[-1].end_offset == len(data)


def test_file_shorter_than_committed_offset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"short\n")
    with pytest.raises(SourceMismatch, match="truncated or replaced"):
        asyncio.run(collect(FileSource(path, 4096, 1 << 20), 100))


def test_each_batch_names_its_file_until_the_fingerprint_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = b"".join(b"line %d\n" % i for i in range(2000))
    path.write_bytes(data)
    batches = asyncio.run(collect(FileSource(path, 300, 1 << 20), 0))
    assert b"".join(bytes(b.data) for b in batches) == data
    stamped = [b for b in batches if b.source is not None]
    # The fingerprint grows with what was read, up to its 1 KiB: then the batches carry none.
    assert stamped == batches[: len(stamped)]
    assert all(b.end_offset <= 1024 for b in stamped[:-1])
    last = identity.decode(stamped[-1].source or "")
    assert isinstance(last, identity.FileOrigin)
    st = path.stat()
    assert (last.path, last.dev, last.ino) == (str(path), st.st_dev, st.st_ino)
    assert last.fp_len == 1024
    assert last.fp == identity.fingerprint(data[:1024])
    assert (last.base, last.open_line) == (0, False)


def test_a_finished_unterminated_line_is_marked_open(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a\nb")
    batches = asyncio.run(collect(FileSource(path, 4096, 1 << 20), 0))
    assert [bytes(b.data) for b in batches] == [b"a\n", b"b\n"]
    origins = [identity.decode(b.source or "") for b in batches]
    assert [o.open_line for o in origins if isinstance(o, identity.FileOrigin)] == [False, True]


def test_descriptors_round_trip_and_garbage_is_named() -> None:
    origins: list[identity.Origin] = [
        identity.FileOrigin("/a b/\u00e9\n", 1, 2, 3, "ff", 4, True),
        identity.GeneratorOrigin(),
        identity.StreamOrigin("stdin"),
    ]
    for origin in origins:
        text = identity.encode(origin)
        assert "\n" not in text
        assert text.isascii()
        assert identity.decode(text) == origin
    assert identity.decode("") is None
    for bad, why in [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"v":9,"kind":"file"}', "unknown version"),
        ('{"v":1,"kind":"tape"}', "unknown source kind"),
        ('{"v":1,"kind":"file","path":"p","dev":-1,"fp_len":1}', "'dev'"),
    ]:
        with pytest.raises(identity.DescriptorError, match=why):
            identity.decode(bad)


def test_a_source_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x\n")
    generator = identity.encode(identity.GeneratorOrigin())
    with pytest.raises(SourceMismatch, match="holds records from the generator"):
        FileSource(path, 4096, 1 << 20).resume(10, generator)
    with pytest.raises(SourceMismatch, match="holds records from the file"):
        GeneratorSource(None, 0).resume(2, asyncio.run(_first_descriptor(path)))
    with pytest.raises(SourceMismatch, match="unreadable"):
        StreamSource(0, "stdin", 4096, 1, owns_fd=False).resume(0, "{garbage")


async def _first_descriptor(path: Path) -> str:
    batches = await collect(FileSource(path, 4096, 1 << 20), 0)
    return batches[0].source or ""


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
    assert b"".join(bytes(b.data) for b in batches) == payload + b"\n"
    assert batches[-1].end_offset == 7 + len(payload)


def test_opening_a_path_says_clearly_why_it_cannot(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^no such file or directory$"):
        FileSpec(tmp_path / "missing").open(SourceOptions(4096, 1 << 20))
    with pytest.raises(SourceError, match="is a directory"):
        FileSpec(tmp_path).open(SourceOptions(4096, 1 << 20))


def test_a_paced_generator_batches_instead_of_dripping() -> None:
    async def run() -> list[Batch]:
        return await asyncio.wait_for(collect(GeneratorSource(300, rate=1000), 0), 30)

    batches = asyncio.run(run())
    assert sum(b.records for b in batches) == 300
    # About 10 ms of records per wake-up at 1000/s, not one record per batch.
    assert len(batches) < 100, len(batches)


def test_a_followed_name_that_never_appears_is_said_at_warning_again_and_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(file_module, "STILL_ABSENT_EVERY_S", 0.05)
    source = FileSource(tmp_path / "never.log", 4096, 1 << 20, FollowConfig(0.01, 1.0))

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "never.log" in r.getMessage()
        ]

    class Third(logging.Handler):
        """Sets `said` at the third WARNING (logged on the loop's thread)."""

        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.said = asyncio.Event()
            self.count = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.count += "never.log" in record.getMessage()
            if self.count >= 3:
                self.said.set()

    async def run() -> None:
        third = Third()
        logging.getLogger("shovel").addHandler(third)
        source.resume(0, "")
        reading = asyncio.ensure_future(anext(source.pieces(0)))
        try:
            async with asyncio.timeout(30):
                await third.said.wait()
        finally:
            logging.getLogger("shovel").removeHandler(third)
            reading.cancel()
            await asyncio.wait({reading})

    with caplog.at_level(logging.INFO, logger="shovel"):
        asyncio.run(run())
    assert all("has not appeared in" in w and "still waiting" in w for w in warnings())
    said = [r.getMessage() for r in caplog.records if r.getMessage().endswith("to appear")]
    assert len(said) == 1, said


def test_a_name_still_absent_is_said_once_a_minute_not_at_every_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(file_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    source = FileSource(tmp_path / "never.log", 4096, 1 << 20, FollowConfig(0.2, 1.0))
    with caplog.at_level(logging.WARNING, logger="shovel"):
        for t in (0, 0.2, 30, 59.8, 60, 60.2, 119.9, 120, 150):
            now[0] = 1000.0 + t
            source._still_absent(str(tmp_path / "never.log"))
    said = [r.getMessage() for r in caplog.records]
    assert [m.split(" has not appeared in ")[1] for m in said] == [
        "60 s: still waiting for it (is the path right?)",
        "120 s: still waiting for it (is the path right?)",
    ]
