"""The record splitter: for any input and any chunking, nothing is lost, added or moved."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shovel.batches import Batch, Piece, Rejected
from shovel.sources.records import RecordSplitter


def split(data: bytes, chunks: list[int], limit: int, start: int = 0) -> list[Piece]:
    s = RecordSplitter(start, limit)
    out: list[Piece] = []
    pos = 0
    for size in chunks:
        out += s.feed(data[pos : pos + size])
        pos += size
    while pos < len(data):
        out += s.feed(data[pos : pos + 7])
        pos += 7
    out += s.finish()
    return out


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, line with newline) of every line; an unterminated last line counts."""
    lines, pos = [], 0
    for part in data.split(b"\n")[:-1]:
        lines.append((pos, part + b"\n"))
        pos += len(part) + 1
    if pos < len(data):
        lines.append((pos, data[pos:]))
    return lines


def check(data: bytes, pieces: list[Piece], limit: int, start: int) -> None:
    lines = expected_lines(data)
    kept = [(o, line) for o, line in lines if len(line.rstrip(b"\n")) <= limit]
    too_long = [(o + start, line) for o, line in lines if len(line.rstrip(b"\n")) > limit]
    batches = [p for p in pieces if isinstance(p, Batch)]
    stored = b"".join(bytes(b.data) for b in batches)
    want = b"".join(line if line.endswith(b"\n") else line + b"\n" for _, line in kept)
    assert stored == want
    assert sum(b.records for b in batches) == len(kept)
    # Rejected pieces reassemble into exactly the long lines, at their offsets.
    rejected: list[tuple[int, bytes]] = []
    for p in pieces:
        if isinstance(p, Rejected):
            if p.first:
                rejected.append((p.offset, b""))
            assert rejected[-1][0] == p.offset
            rejected[-1] = (p.offset, rejected[-1][1] + p.data)
    assert rejected == too_long
    # The committed offset may only pass a rejected line once its last piece is out.
    open_line: int | None = None
    for p in pieces:
        if isinstance(p, Rejected):
            open_line = None if p.last else p.offset
        elif open_line is not None:
            assert p.end_offset <= open_line, "a batch passed a rejected line still being kept"
    # Offsets never go back, each batch ends where its data ends in the source, and the
    # last one ends at the end of the input.
    ends = [b.end_offset for b in batches]
    assert ends == sorted(ends)
    if data:
        assert ends[-1] == start + len(data)
    for b in batches:
        if b.data and (b.end_offset - start < len(data) or data.endswith(b"\n")):
            assert data[: b.end_offset - start].endswith(bytes(b.data))


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=400).map(lambda b: b.replace(b"\x01", b"\n")),
    chunks=st.lists(st.integers(min_value=1, max_value=64), max_size=30),
    limit=st.integers(min_value=1, max_value=40),
    start=st.integers(min_value=0, max_value=10**12),
)
def test_any_input_any_chunking(data: bytes, chunks: list[int], limit: int, start: int) -> None:
    check(data, split(data, chunks, limit, start), limit, start)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.integers(min_value=0, max_value=300), max_size=40),
    limit=st.integers(min_value=1, max_value=120),
    chunk=st.integers(min_value=1, max_value=500),
)
def test_lines_around_the_limit(lines: list[int], limit: int, chunk: int) -> None:
    data = b"".join(b"x" * n + b"\n" for n in lines)
    check(data, split(data, [chunk] * (len(data) // chunk + 1), limit, 0), limit, 0)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_crlf_nul_and_invalid_utf8_are_bytes_like_any_other(chunk: int) -> None:
    data = b"a\r\nbb\n\n\x00\xff\xfeccc\nlast-without-newline"
    pieces = split(data, [chunk] * 100, 1 << 20, 100)
    check(data, pieces, 1 << 20, 100)
    assert b"".join(bytes(p.data) for p in pieces) == data + b"\n"


def test_empty_and_newline_only_inputs() -> None:
    assert split(b"", [], 10) == []
    pieces = split(b"\n\n\n", [2, 2], 10)
    assert b"".join(bytes(p.data) for p in pieces if isinstance(p, Batch)) == b"\n\n\n"


def test_a_huge_line_is_streamed_in_bounded_pieces() -> None:
    s = RecordSplitter(0, 1000)
    chunk = b"y" * 65536
    biggest = 0
    for _ in range(100):
        for p in s.feed(chunk):
            assert isinstance(p, Rejected)
            biggest = max(biggest, len(p.data))
    tail = s.feed(b"end\nnext\n")
    assert s.carried == 0
    assert biggest <= 65536 + 1000
    assert [type(p) for p in tail] == [Rejected, Batch, Batch]
    last = tail[-1]
    assert isinstance(last, Batch)
    assert (bytes(last.data), last.records, last.end_offset) == (b"next\n", 1, 100 * 65536 + 9)
