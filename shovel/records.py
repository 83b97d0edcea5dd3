"""Cutting a byte stream into records: whole lines in batches, oversized lines set apart.

A record is one line; its size is its content without the newline. Lines longer than the
limit are not stored with the others: they come out as `Rejected` pieces (streamed in parts
when they do not fit in memory), and an empty batch then carries the offset past them so the
committed offset can move on. Memory stays bounded by the limit plus one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

from shovel.batches import Batch, Piece, Rejected


def oversized_lines(data: bytes, limit: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each line in `data` (which ends with a newline) whose content is longer
    than `limit`; `end` is just past its newline."""
    if len(data) <= limit + 1:
        return
    # A line longer than `limit` covers at least one whole aligned window of `half` bytes, so
    # only windows without a newline need a closer look: about two searches per `limit` bytes.
    half = max((limit + 1) // 2, 1)
    pos = 0
    while pos < len(data):
        if data.find(b"\n", pos, pos + half) != -1:
            pos += half
            continue
        start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos) + 1
        if end - 1 - start > limit:
            yield start, end
        pos = -(-end // half) * half


class RecordSplitter:
    """Cuts chunks at newlines, carrying a partial last line over to the next chunk."""

    def __init__(self, start_offset: int, max_record_bytes: int) -> None:
        self.offset = start_offset
        self.limit = max_record_bytes
        # The incomplete last line, as the chunks it came in (joined once, when it ends, so a
        # long line costs linear, not quadratic, copying).
        self._carry: list[bytes] = []
        self._carry_len = 0
        # Source offset where the oversized line being streamed began, or None.
        self._rejecting: int | None = None
        self._rejected_len = 0

    @property
    def carried(self) -> int:
        """Bytes of an incomplete record held back."""
        return self._carry_len

    @property
    def rejecting_line(self) -> bool:
        """Whether an oversized line is being streamed out (its end not seen yet)."""
        return self._rejecting is not None

    def feed(self, chunk: bytes) -> list[Piece]:
        """Adds a chunk; returns the pieces it completes, in source order."""
        pieces: list[Piece] = []
        if self._rejecting is not None:
            nl = chunk.find(b"\n")
            if nl == -1:
                self._rejected_len += len(chunk)
                return [Rejected(self._rejecting, chunk, first=False, last=False)]
            pieces.append(Rejected(self._rejecting, chunk[: nl + 1], first=False, last=True))
            self.offset = self._rejecting + self._rejected_len + nl + 1
            self._rejecting = None
            pieces.append(Batch(b"", 0, self.offset))
            chunk = chunk[nl + 1 :]
        if chunk.find(b"\n") == -1:
            if chunk:
                self._carry.append(chunk)
                self._carry_len += len(chunk)
        else:
            buf = b"".join([*self._carry, chunk]) if self._carry else chunk
            cut = buf.rfind(b"\n") + 1
            data = buf if cut == len(buf) else buf[:cut]
            rest = buf[cut:]
            self._carry, self._carry_len = ([rest] if rest else []), len(rest)
            self._cut(data, pieces)
        if self._carry_len > self.limit:
            self._rejecting = self.offset
            self._rejected_len = self._carry_len
            data = b"".join(self._carry)
            self._carry, self._carry_len = [], 0
            pieces.append(Rejected(self.offset, data, first=True, last=False))
        return pieces

    def _cut(self, data: bytes, pieces: list[Piece]) -> None:
        base = self.offset
        pos = 0
        for start, end in oversized_lines(data, self.limit):
            if start > pos:
                part = data[pos:start]
                pieces.append(Batch(part, part.count(b"\n"), base + start))
            pieces.append(Rejected(base + start, data[start:end], first=True, last=True))
            pos = end
        if pos == 0:
            pieces.append(Batch(data, data.count(b"\n"), base + len(data)))
        elif pos < len(data):
            part = data[pos:]
            pieces.append(Batch(part, part.count(b"\n"), base + len(data)))
        else:
            pieces.append(Batch(b"", 0, base + len(data)))
        self.offset = base + len(data)

    def finish(self) -> list[Piece]:
        """At the end of the input: an unterminated last line becomes a record (a newline is
        added), or ends the oversized line being streamed."""
        if self._rejecting is not None:
            self.offset = self._rejecting + self._rejected_len
            pieces: list[Piece] = [Rejected(self._rejecting, b"", first=False, last=True)]
            self._rejecting = None
            return [*pieces, Batch(b"", 0, self.offset)]
        if not self._carry:
            return []
        self.offset += self._carry_len
        data = b"".join(self._carry)
        self._carry, self._carry_len = [], 0
        # Within the limit here: a longer carry would have been rejected in feed().
        return [Batch(data + b"\n", 1, self.offset)]
