"""The NATS source's ledger: which stream sequences are stored here and not yet acknowledged.

A message goes through these states, by its stream sequence:
  pending    in a batch handed to the pipeline, not yet durable;
  durable    its batch is durable (its checkpoint is on disk): acknowledged, the server's
             confirmation awaited (sent again while it does not come);
  confirmed  the server confirmed the acknowledgement;
and leaves the ledger only when the consumer's acknowledgement floor passes it: a confirmed
acknowledgement can still be lost with a server that fails before passing it on, and the
message would then come back. Batches are made durable in the order they were handed over,
so the storage's count of durable records says which ones are.

The sequences in the ledger are what the checkpoint lists (`ranges`): after a crash, a
redelivery of one of them is already stored here, so it is acknowledged again, never stored
twice in this output directory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shovel.identity import DescriptorError

# The most sequences a checkpoint may list; a listing past it is not one shovel wrote.
MAX_LISTED = 10_000_000


def encode_ranges(seqs: Iterable[int]) -> str:
    """Sorted sequences as "A-B,C,...": consecutive runs joined."""
    parts: list[str] = []
    start = prev = -2
    for seq in sorted(seqs):
        if seq == prev + 1:
            prev = seq
            continue
        if start >= 0:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = seq
    if start >= 0:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def decode_ranges(text: str) -> list[int]:
    """The sequences of an `encode_ranges` text; raises DescriptorError."""
    seqs: list[int] = []
    if not text:
        return seqs
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise DescriptorError(f"bad sequence range {part!r}")
        first, last = int(low), int(high) if dash else int(low)
        if last < first or len(seqs) + last - first + 1 > MAX_LISTED:
            raise DescriptorError(f"bad sequence range {part!r}")
        seqs.extend(range(first, last + 1))
    return seqs


@dataclass(slots=True)
class Entry:
    """A sequence stored (or being stored) here and not confirmed acknowledged."""

    # The acknowledgement subject of its latest delivery; None while only the checkpoint
    # knows it (a redelivery brings one).
    reply: str | None
    # When it was fetched (time.monotonic()); None for one known only from the checkpoint.
    fetched_at: float | None
    durable: bool
    # When its acknowledgement was last sent (time.monotonic()); None: not since its latest
    # delivery.
    ack_sent_at: float | None = None
    confirmed: bool = False


class Ledger:
    """See the module docstring. Not thread-safe: used on the event loop only."""

    def __init__(self, restored: Iterable[int]) -> None:
        self.entries: dict[int, Entry] = {seq: Entry(None, None, durable=True) for seq in restored}
        # Batches handed over and not yet durable: (records handed over up to its end, seqs).
        self._batches: deque[tuple[int, list[int]]] = deque()
        self.records_handed = 0
        # Entries of this run (fetched_at set) not confirmed: kept as a count, asked for often.
        self._in_flight = 0

    def in_flight(self) -> int:
        """Messages of this run stored or being stored and not yet confirmed acknowledged."""
        return self._in_flight

    def _counted(self, entry: Entry) -> bool:
        return entry.fetched_at is not None and not entry.confirmed

    def known(self, seq: int, reply: str) -> Entry | None:
        """A delivery of `seq`: its entry if it is already stored (or being stored) here, with
        the delivery's acknowledgement subject kept for the acknowledgement (to be sent again:
        the server delivered it again, so it does not hold it acknowledged); None if new."""
        entry = self.entries.get(seq)
        if entry is not None:
            if entry.confirmed and entry.fetched_at is not None:
                self._in_flight += 1
            entry.reply = reply
            entry.confirmed = False
            # Whatever acknowledgement was sent did not take: send one for this delivery.
            entry.ack_sent_at = None
        return entry

    def ranges_with(self, seqs: Iterable[int]) -> str:
        """The checkpoint's listing if `seqs` were handed over now."""
        return encode_ranges([*self.entries, *seqs])

    def hand_over(self, batch: list[tuple[int, str, float]]) -> None:
        """Records a batch of (seq, reply, fetched_at) handed to the pipeline."""
        for seq, reply, fetched_at in batch:
            self.entries[seq] = Entry(reply, fetched_at, durable=False)
        self._in_flight += len(batch)
        self.records_handed += len(batch)
        self._batches.append((self.records_handed, [seq for seq, _, _ in batch]))

    def made_durable(self, records_durable: int) -> None:
        """Marks durable the batches covered by `records_durable` (records of this run that
        storage made durable): `unconfirmed` then lists them, to acknowledge."""
        while self._batches and self._batches[0][0] <= records_durable:
            _, seqs = self._batches.popleft()
            for seq in seqs:
                entry = self.entries.get(seq)
                if entry is not None:
                    entry.durable = True

    def confirmed(self, seq: int) -> Entry | None:
        """The server confirmed the acknowledgement of `seq`; returns its entry, if that is
        news."""
        entry = self.entries.get(seq)
        if entry is None or not entry.durable or entry.confirmed:
            return None
        if entry.fetched_at is not None:
            self._in_flight -= 1
        entry.confirmed = True
        return entry

    def unconfirmed(self, sent_before: float) -> list[tuple[int, str]]:
        """Durable sequences with a known subject whose acknowledgement was not sent since
        `sent_before` (time.monotonic()): to send (again)."""
        return [
            (seq, e.reply)
            for seq, e in self.entries.items()
            if e.durable
            and not e.confirmed
            and e.reply is not None
            and (e.ack_sent_at is None or e.ack_sent_at < sent_before)
        ]

    def below_floor(self, ack_floor: int) -> int:
        """Drops durable sequences at or below the consumer's acknowledgement floor (the
        server holds them acknowledged); returns how many."""
        gone = [s for s, e in self.entries.items() if e.durable and s <= ack_floor]
        for seq in gone:
            self._drop(seq)
        return len(gone)

    def _drop(self, seq: int) -> None:
        entry = self.entries.pop(seq, None)
        if entry is not None and self._counted(entry):
            self._in_flight -= 1

    def take_not_durable(self) -> list[tuple[int, str]]:
        """Sequences handed over whose batches never became durable, with their subjects:
        they leave the ledger (to be given back)."""
        back = [
            (seq, e.reply)
            for seq, e in self.entries.items()
            if not e.durable and e.reply is not None
        ]
        for seq, _ in back:
            self._drop(seq)
        return back
