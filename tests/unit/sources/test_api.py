"""The lifecycle every source keeps: what a source that implements only its reading gets by
default, and the check of the checkpoint's origin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from shovel.batches import Batch, Piece
from shovel.sources import Source, SourceMismatch
from shovel.sources.api import stored_origin
from shovel.sources.identity import GeneratorOrigin, StreamOrigin, encode


class Reading(Source):
    """A source that only reads: three records."""

    description = "three records"
    replayable = True

    def resume(self, committed_offset: int, descriptor: str) -> str:
        return "from the start"

    async def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        yield Batch(b"a\nb\nc\n", 3, 3)


def test_every_other_step_does_nothing_by_default() -> None:
    source = Reading()

    async def lifecycle() -> list[Piece]:
        assert await source.open() == ""
        pieces = [piece async for piece in source.pieces(0)]
        source.durable_progress()
        await asyncio.wait_for(source.acknowledge(lambda: 3), 1)
        assert source.stop_tail() == []
        await source.finish(3, 1.0)
        await source.close()
        return pieces

    assert asyncio.run(lifecycle()) == [Batch(b"a\nb\nc\n", 3, 3)]
    assert source.collectors() == []


def test_a_source_must_say_how_it_resumes_and_reads() -> None:
    class Nothing(Source):
        description = "nothing"
        replayable = True

    with pytest.raises(TypeError, match="abstract"):
        Nothing()  # type: ignore[abstract]


def test_the_stored_origin_must_be_of_the_kind_given() -> None:
    assert stored_origin("", GeneratorOrigin, "the generator") is None
    assert stored_origin(encode(GeneratorOrigin()), GeneratorOrigin, "x") == GeneratorOrigin()
    with pytest.raises(
        SourceMismatch,
        match=r"holds records from a stream \(stdin\), and the source now is the generator; "
        r"the two must not be mixed \(start afresh\)",
    ):
        stored_origin(
            encode(StreamOrigin("stdin")), GeneratorOrigin, "the generator", "start afresh"
        )
    with pytest.raises(SourceMismatch, match="unreadable"):
        stored_origin("{", GeneratorOrigin, "the generator")
