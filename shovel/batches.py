"""What a source hands to storage: batches of whole records, and the pieces of lines too long
to be records (kept in rejected/ instead)."""

from __future__ import annotations

from dataclasses import dataclass

from shovel._native import Records


@dataclass(frozen=True, slots=True)
class Batch:
    """Whole records (each ending with a newline) and where they end in the source. `data` is
    bytes, or `Records` made by the native splitter, which storage takes over without a copy
    (so a batch is handed to storage once)."""

    data: bytes | Records
    records: int
    end_offset: int
    # The source descriptor (identity.py) that takes effect with this batch and is kept in the
    # checkpoint that covers it; None: unchanged.
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """(Part of) a line set apart instead of stored: longer than the record limit, or the
    continuation of a line stored before without its end (`continues`).

    A line that fits in memory comes as one piece (`first` and `last`); a longer one is
    streamed in parts. `offset` is where the line starts in the source.
    """

    offset: int
    data: bytes
    first: bool
    last: bool
    continues: bool = False


Piece = Batch | Rejected
