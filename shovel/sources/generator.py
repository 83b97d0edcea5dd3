"""The deterministic generator as a source: the same records in every run, endless or exactly
N, optionally paced; its offsets are sequence numbers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import ClassVar

from shovel.batches import Batch, Piece
from shovel.sources.api import Source, SourceOptions, stored_origin
from shovel.sources.identity import GeneratorOrigin, encode

# The endless generator's pace when none is given: slow enough to watch.
DEFAULT_GENERATE_RATE = 1000.0


@dataclass(frozen=True, slots=True)
class GeneratorSpec:
    """`generate` (endless) or `generate:N` (exactly N records)."""

    count: int | None
    followable: ClassVar[bool] = False
    reads_stdin: ClassVar[bool] = False

    def open(self, options: SourceOptions) -> Source:
        """The generator, paced to `options.generate_rate` (0: as fast as possible); when none
        is given, as fast as possible for an exact count and a pace a person can watch for the
        endless one."""
        rate = options.generate_rate
        if rate is None:
            rate = DEFAULT_GENERATE_RATE if self.count is None else 0.0
        return GeneratorSource(self.count, rate)


def parse_generator(text: str) -> GeneratorSpec | None:
    """`generate` or `generate:N`, or None; raises ValueError for a bad N."""
    if text == "generate":
        return GeneratorSpec(None)
    if not text.startswith("generate:"):
        return None
    raw = text.removeprefix("generate:")
    if not raw.isdigit():
        raise ValueError("generate:N needs a whole number N >= 0")
    return GeneratorSpec(int(raw))


# The generator wakes at most this often when paced.
PACING_TICK_S = 0.01


def generated_record(seq: int) -> bytes:
    """Record `seq` of the generator: the same bytes in every run (about 100 bytes)."""
    digest = hashlib.blake2b(seq.to_bytes(8, "big"), digest_size=16).hexdigest()
    return b'{"seq":%d,"source":"shovel-generator","payload":"%s"}\n' % (seq, digest.encode())


class GeneratorSource(Source):
    """Deterministic records, endless or exactly `count`, optionally paced to `rate` per s."""

    replayable = True
    offset_unit = "records"

    def __init__(self, count: int | None, rate: float, batch_records: int = 1000) -> None:
        self.count = count
        self.rate = rate
        self.batch_records = batch_records
        limit = "endless" if count is None else f"{count} records"
        pace = "as fast as possible" if rate == 0 else f"{rate:g} records/s"
        self.description = f"generator ({limit}, {pace})"

    def resume(self, committed_offset: int, descriptor: str) -> str:
        stored_origin(descriptor, GeneratorOrigin, "the generator")
        return f"resuming at offset {committed_offset}"

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        seq = start_offset
        started = loop.time()
        produced = 0
        origin: str | None = encode(GeneratorOrigin())
        while self.count is None or seq < self.count:
            n = (
                self.batch_records
                if self.count is None
                else min(self.batch_records, self.count - seq)
            )
            if self.rate > 0:
                due = int((loop.time() - started) * self.rate) + 1 - produced
                if due <= 0:
                    # Pacing, not synchronisation: wait until the next record is due, but
                    # at least a tick, so that a modest rate still makes batches, not drips.
                    wait_s = produced / self.rate - (loop.time() - started)
                    await asyncio.sleep(max(wait_s, PACING_TICK_S))
                    continue
                n = min(n, due)
            data = b"".join(generated_record(i) for i in range(seq, seq + n))
            seq += n
            produced += n
            yield Batch(data, n, seq, origin)
            origin = None
