"""Benchmark inputs: files of fixed-width 100-byte records, and the check that shovel's
segments hold exactly such a file (or a prefix of it).

The content is deterministic: blocks of 10,000 records, each block the same template with its
block number written into every record's sequence number. A file can be grown block by block,
keeping a running digest, so that one file serves every size of a sweep.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common import BenchError, MiB

from shovel.sources import generated_record

RECORD_BYTES = 100
BLOCK_RECORDS = 10_000
BLOCK_BYTES = RECORD_BYTES * BLOCK_RECORDS  # 1,000,000 bytes
# Record layout: {"seq":<12 digits>,"source":"shovel-bench","payload":"<42 hex>"}\n
# The 12-digit seq is <8-digit block number><4-digit index in the block>.
SEQ_AT = len(b'{"seq":')
BLOCK_DIGITS = 8
HASH_CHUNK = 4 * MiB


@dataclass(frozen=True, slots=True)
class InputFile:
    """A generated input and what shovel's output must match."""

    path: Path
    size: int
    records: int
    digest: str

    @property
    def mib(self) -> float:
        """Size in MiB."""
        return self.size / MiB


def blocks_for(size_mib: float) -> int:
    """Blocks needed for at least `size_mib` MiB."""
    return -(-int(size_mib * MiB) // BLOCK_BYTES)


def bytes_for(size_mib: float) -> int:
    """The exact size of an input of at least `size_mib` MiB."""
    return blocks_for(size_mib) * BLOCK_BYTES


def _block_template() -> bytearray:
    """One block of records with block number 0; only the block number changes later."""
    lines = []
    for i in range(BLOCK_RECORDS):
        payload = hashlib.blake2b(i.to_bytes(4, "big"), digest_size=21).hexdigest()
        line = b'{"seq":%012d,"source":"shovel-bench","payload":"%s"}\n' % (i, payload.encode())
        assert len(line) == RECORD_BYTES
        lines.append(line)
    return bytearray(b"".join(lines))


def _set_block_number(block: bytearray, number: int) -> None:
    # Records are fixed-width, so each digit of the block number sits at the same place in
    # every record: one strided slice assignment per digit rewrites the whole block.
    for pos, digit in enumerate(b"%0*d" % (BLOCK_DIGITS, number)):
        block[SEQ_AT + pos :: RECORD_BYTES] = bytes([digit]) * BLOCK_RECORDS


class GrowingInput:
    """An input file written block by block; `grow_to` extends it and returns it as it stands.

    Each call ends with an fsync, so that no writeback of the input competes with the timed
    runs that follow. Use it as a context manager: the file handle is closed on exit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("wb")
        self._block = _block_template()
        self._hash = hashlib.blake2b()
        self._blocks = 0

    def __enter__(self) -> GrowingInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def grow_to(self, size_mib: float) -> InputFile:
        """Appends blocks until the file holds at least `size_mib` MiB (never shrinks it)."""
        target = blocks_for(size_mib)
        while self._blocks < target:
            _set_block_number(self._block, self._blocks)
            self._file.write(self._block)
            self._hash.update(self._block)
            self._blocks += 1
        self._file.flush()
        os.fsync(self._file.fileno())
        return InputFile(
            self.path,
            self._blocks * BLOCK_BYTES,
            self._blocks * BLOCK_RECORDS,
            self._hash.copy().hexdigest(),
        )


def _chunks(paths: Sequence[Path]) -> Iterator[bytes]:
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                yield chunk


def digest_of(paths: Sequence[Path]) -> tuple[int, str]:
    """Size and blake2b digest of the concatenation of `paths`."""
    h = hashlib.blake2b()
    size = 0
    for chunk in _chunks(paths):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def prepare_input(path: Path, size_mib: float) -> tuple[InputFile, bool]:
    """An input of `size_mib` MiB at `path`: reused when a file of exactly the right size is
    there already (its digest is read back), else written under a temporary name and renamed.
    Returns it and whether it was reused."""
    size = bytes_for(size_mib)
    if path.is_file() and path.stat().st_size == size:
        _, digest = digest_of([path])
        return InputFile(path, size, size // RECORD_BYTES, digest), True
    partial = path.with_name(path.name + ".partial")
    with GrowingInput(partial) as grower:
        inp = grower.grow_to(size_mib)
    partial.replace(path)
    return InputFile(path, inp.size, inp.records, inp.digest), False


def segments_of(out: Path) -> list[Path]:
    """shovel's segment files in `out`, in name order (the order of the data)."""
    return sorted((out / "segments").glob("*.seg"), key=lambda p: p.name)


def verify_whole_copy(inp: InputFile, out: Path) -> None:
    """Raises BenchError unless the segments in `out`, in name order, are exactly the input."""
    verify_files(inp, segments_of(out), "shovel")


def verify_files(inp: InputFile, paths: Sequence[Path], tool: str) -> None:
    """Raises BenchError unless `paths`, joined in the order given, are exactly the input."""
    size, digest = digest_of(paths)
    if size != inp.size or digest != inp.digest:
        raise BenchError(
            f"{tool}'s output differs from the input: {len(paths)} files, {size} bytes "
            f"(input {inp.size}), digest {'matches' if digest == inp.digest else 'differs'}"
        )


def _read_at(paths: Sequence[Path], offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of the concatenation of `paths` (fewer at its end)."""
    out = bytearray()
    for p in paths:
        size = p.stat().st_size
        if offset >= size:
            offset -= size
            continue
        with p.open("rb") as f:
            f.seek(offset)
            out += f.read(length - len(out))
        offset = 0
        if len(out) == length:
            break
    return bytes(out)


def verify_prefix(inp: InputFile, out: Path, stored: int, probe_bytes: int = MiB) -> None:
    """Raises BenchError unless the segments in `out` hold `stored` bytes whose first and last
    `probe_bytes` equal the input's at the same offsets, ending on a record boundary.

    A cheap check for runs stopped part-way: the records carry their sequence numbers, so a
    shifted, truncated or duplicated copy differs in its first or last bytes."""
    segments = segments_of(out)
    total = sum(p.stat().st_size for p in segments)
    if total != stored:
        raise BenchError(f"the segments hold {total} bytes, but {stored} are committed")
    if stored > inp.size or stored % RECORD_BYTES != 0:
        raise BenchError(f"{stored} bytes committed: not a whole-record prefix of the input")
    with inp.path.open("rb") as f:
        for offset in (0, max(stored - probe_bytes, 0)):
            length = min(probe_bytes, stored - offset)
            f.seek(offset)
            if _read_at(segments, offset, length) != f.read(length):
                raise BenchError(f"the segments differ from the input near offset {offset}")


def verify_generated(out: Path, committed: int) -> None:
    """Raises BenchError unless the segments in `out` hold exactly `committed` records of
    shovel's generator (whose offset counts records), the last one being record
    `committed - 1`."""
    lines = 0
    tail = b""
    for chunk in _chunks(segments_of(out)):
        lines += chunk.count(b"\n")
        tail = tail[-4096:] + chunk  # enough for the last record across a chunk boundary
    if lines != committed:
        raise BenchError(f"the segments hold {lines} records, but {committed} are committed")
    if committed and not tail.endswith(generated_record(committed - 1)):
        raise BenchError("the last stored record is not the last committed one")
