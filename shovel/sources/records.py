"""Cutting a byte stream into records: whole lines in batches, oversized lines set apart.

A record is one line; its size is its content without the newline. Lines longer than the
limit are not stored with the others: they come out as `Rejected` pieces (streamed in parts
when they do not fit in memory), and an empty batch then carries the offset past them so the
committed offset can move on. Memory stays bounded by the limit plus one chunk.

The cutting is native (`shovel._native.Splitter`): newlines are found and counted there, and a
chunk read by `ReadFile` becomes its batch without a copy. What this module adds is the
translation of its pieces into `Batch` and `Rejected`: a few calls per chunk, whatever its size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shovel._native import Chunk, Splitter
from shovel.batches import Batch, Piece, Rejected

if TYPE_CHECKING:  # a type of the stub only: (records, count, end_offset) for a batch,
    # (offset, data, first, last) for (part of) a line over the record limit
    from shovel._native import _RawPiece

__all__ = ["RecordSplitter"]


class RecordSplitter:
    """Cuts chunks at newlines, carrying a partial last line over to the next chunk."""

    def __init__(self, start_offset: int, max_record_bytes: int) -> None:
        self._native = Splitter(start_offset, max_record_bytes)
        # Where the line set apart by set_aside_line starts (None: none was).
        self._set_aside_at: int | None = None

    @property
    def offset(self) -> int:
        """Source offset just past the last byte handed out (in a batch or set apart)."""
        return self._native.offset

    @property
    def carried(self) -> int:
        """Bytes of an incomplete record held back."""
        return self._native.carried

    @property
    def rejecting_line(self) -> bool:
        """Whether an oversized line is being streamed out (its end not seen yet)."""
        return self._native.rejecting_line

    def feed(self, chunk: bytes | Chunk, skip: int = 0) -> list[Piece]:
        """Adds a chunk (a `Chunk` is taken over; bytes are copied); its first `skip` bytes are
        consumed without being fed, which is allowed only between lines (ValueError inside
        one). Returns the pieces it completes, in source order."""
        return self._pieces(self._native.feed(chunk, skip))

    def set_aside_line(self) -> None:
        """The next line, up to and including its newline, is set apart (`Rejected` pieces with
        `continues`) instead of stored, whatever its length: it continues a line stored before
        without its end. ValueError in the middle of a line."""
        self._native.set_aside_line()
        self._set_aside_at = self._native.offset

    def finish(self) -> list[Piece]:
        """At the end of the input: an unterminated last line becomes a record (a newline is
        added), or ends the oversized line being streamed."""
        return self._pieces(self._native.finish())

    def _pieces(self, raw: list[_RawPiece]) -> list[Piece]:
        pieces: list[Piece] = []
        for item in raw:
            if len(item) == 3:
                pieces.append(Batch(*item))
            else:
                offset, data, first, last = item
                pieces.append(
                    Rejected(offset, data, first, last, continues=offset == self._set_aside_at)
                )
        return pieces
