"""The NATS source's ledger: the stream sequences stored here that a delivery may bring again.

An entry, by stream sequence, is one of:
  pending    in a batch handed to the pipeline, not yet durable;
  durable    its batch is durable (its checkpoint is on disk): acknowledged, the server's
             confirmation awaited (sent again while it does not come);
  restored   listed by the checkpoint as stored and not confirmed: an earlier run stored it, and
             whether the server holds it acknowledged is not known (a delivery of it brings a
             subject to acknowledge it with, and makes it durable-and-unacknowledged again);
  confirmed  the server confirmed the acknowledgement: an empty reply without headers. A reply
             with a status (503, no responders: while the consumer has no leader, nothing
             answers its acknowledgement subject) confirms nothing; the entry stays durable.
Batches are made durable in the order they were handed over, so the storage's count of durable
records says which ones are.

What bounds the ledger is what this replica does, never what other clients hold. The
consumer's acknowledgement floor (every message up to it acknowledged) stays below a message
that another client holds unacknowledged, for as long as it holds it: waiting for the floor to
pass an entry, as the ledger once did for every entry, stopped every replica on a consumer once
one message was held elsewhere (each one's listing filled with entries above the floor, so
none took the batch it had fetched, so none pulled, and the held message, which the server
delivers again only in answer to a pull, never came back). So:
  - pending and durable entries, this replica's own deliveries, stay until the server confirms
    them (it confirms every acknowledgement, of a message already acknowledged too): at most
    what the reader fetches, which it bounds;
  - restored entries stay until delivered again, or until `drop_restored` (the source calls it
    once ack_wait has passed since it bound the consumer: any of them the server did not hold
    acknowledged has by then been delivered again, here or to another replica);
  - confirmed entries are kept only as room allows: at most `kept_max` of them, and what the
    checkpoint's listing has room for beside the others, the longest confirmed leaving first.
    They guard against a server that loses an acknowledgement it had confirmed (nats-server
    confirms one once its consumer holds it, on a cluster once replicated; measured here, a
    killed lone server and a killed consumer leader both kept every confirmed one): a
    redelivery of one still listed is acknowledged again, not stored twice here;
and any entry leaves once the acknowledgement floor passes it, except a pending one (it is
acknowledged once durable: the server confirms that too).

The checkpoint lists the entries (`listing`): the unconfirmed ones (pending, durable,
restored) and, apart, the confirmed ones it has room for. After a crash, a delivery of a
listed sequence is acknowledged, never stored twice in this output directory. A stop records
beside it which of the listed ones were confirmed after it was written (`StopRecord`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shovel.safefiles import create_file, fsync_dir
from shovel.sources.identity import DescriptorError

# The most sequences a checkpoint may list; a listing past it is not one shovel wrote.
MAX_LISTED = 10_000_000
# The longest listing a stop record may hold: above what a checkpoint's listing may be
# (nats/source.py, LISTING_MAX_CHARS).
MAX_RECORD_CHARS = 4096


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
    """A sequence stored (or being stored) here."""

    # The acknowledgement subject of its latest delivery in this run; None while only the
    # checkpoint knows it (a delivery brings one).
    reply: str | None
    # When its latest delivery was fetched (time.monotonic()); None for one known only from
    # the checkpoint.
    fetched_at: float | None
    durable: bool
    # When its acknowledgement was last sent (time.monotonic()); None: not since its latest
    # delivery.
    ack_sent_at: float | None = None
    confirmed: bool = False

    @property
    def delivered(self) -> bool:
        """Delivered in this run and not yet known acknowledged: counted in `in_flight`."""
        return self.reply is not None and not self.confirmed


@dataclass(frozen=True, slots=True)
class Listing:
    """What a checkpoint lists: stored sequences not confirmed acknowledged, and (apart) some
    confirmed ones; both as `encode_ranges` texts."""

    unconfirmed: str = ""
    confirmed: str = ""

    def __len__(self) -> int:
        return len(self.unconfirmed) + len(self.confirmed)


@dataclass(frozen=True, slots=True)
class Counts:
    """The unconfirmed entries by state, for messages and metrics."""

    pending: int
    durable: int
    restored: int


class Ledger:
    """See the module docstring. Not thread-safe: used on the event loop only."""

    def __init__(
        self,
        unconfirmed: Iterable[int],
        confirmed: Iterable[int] = (),
        kept_max: int = 0,
        on_disk: Listing = Listing(),
    ) -> None:
        """Restores the entries the checkpoint on disk lists (`on_disk`, as written): those
        `unconfirmed`, and those known `confirmed` (kept, up to `kept_max`)."""
        self.entries: dict[int, Entry] = {}
        # The confirmed entries, longest confirmed first: they leave first for room.
        self._kept: dict[int, None] = {}
        self._kept_max = kept_max
        for seq in confirmed:
            self.entries[seq] = Entry(None, None, durable=True, confirmed=True)
            self._keep(seq)
        for seq in unconfirmed:
            self._kept.pop(seq, None)
            self.entries[seq] = Entry(None, None, durable=True)
        self._restored = sum(1 for e in self.entries.values() if not e.confirmed)
        # Batches handed over and not yet durable: (records handed over up to its end, seqs,
        # the listing that went with it).
        self._batches: list[tuple[int, list[int], Listing]] = []
        self.records_handed = 0
        # The listing of the checkpoint on disk: the restored one until a batch of this run is
        # durable.
        self.durable_listing = on_disk
        # Entries delivered in this run and not confirmed: kept as a count, asked for often.
        self._in_flight = 0

    def in_flight(self) -> int:
        """Messages delivered in this run, stored or being stored, not yet known acknowledged."""
        return self._in_flight

    def restored(self) -> int:
        """Restored entries not delivered again (nor passed by the acknowledgement floor)."""
        return self._restored

    def counts(self) -> Counts:
        """The unconfirmed entries by state (a walk over the ledger: for an occasional message)."""
        pending = durable = restored = 0
        for e in self.entries.values():
            if e.confirmed:
                continue
            if not e.durable:
                pending += 1
            elif e.reply is None:
                restored += 1
            else:
                durable += 1
        return Counts(pending, durable, restored)

    def _keep(self, seq: int) -> None:
        self._kept[seq] = None
        while len(self._kept) > self._kept_max:
            self._drop(next(iter(self._kept)))

    def known(self, seq: int, reply: str) -> Entry | None:
        """A delivery of `seq`: its entry if it is already stored (or being stored) here, with
        the delivery's acknowledgement subject kept for the acknowledgement (to be sent again:
        the server delivered it again, so it does not hold it acknowledged); None if new."""
        entry = self.entries.get(seq)
        if entry is not None:
            if entry.reply is None and not entry.confirmed:
                self._restored -= 1
            if not entry.delivered:
                self._in_flight += 1
            self._kept.pop(seq, None)
            entry.reply = reply
            entry.confirmed = False
            # Whatever acknowledgement was sent did not take: send one for this delivery.
            entry.ack_sent_at = None
        return entry

    def _unconfirmed_with(self, seqs: Iterable[int]) -> str:
        return encode_ranges([*(s for s, e in self.entries.items() if not e.confirmed), *seqs])

    def fits(self, seqs: Iterable[int], max_chars: int) -> bool:
        """Whether handing `seqs` over now keeps what must be listed (every unconfirmed entry)
        within `max_chars`; confirmed entries make room."""
        return len(self._unconfirmed_with(seqs)) <= max_chars

    def listing(self, max_chars: int) -> Listing:
        """The checkpoint's listing now, within `max_chars` if the unconfirmed entries are
        (`fits` said so): the confirmed entries that do not fit beside them leave the ledger,
        the longest confirmed first."""
        unconfirmed = self._unconfirmed_with(())
        room = max_chars - len(unconfirmed)
        kept = list(self._kept)
        confirmed = encode_ranges(kept)
        if len(confirmed) > room:
            # The most recently confirmed that fit: a bisection over how many (adding one can
            # join two ranges, so the length is not monotonic: any count that fits will do).
            low, high = 0, len(kept)
            while low < high:
                mid = (low + high + 1) // 2
                if len(encode_ranges(kept[len(kept) - mid :])) <= room:
                    low = mid
                else:
                    high = mid - 1
            for seq in kept[: len(kept) - low]:
                self._drop(seq)
            confirmed = encode_ranges(kept[len(kept) - low :])
        return Listing(unconfirmed, confirmed)

    def hand_over(self, batch: list[tuple[int, str, float]], max_chars: int) -> Listing:
        """Records a batch of (seq, reply, fetched_at) handed to the pipeline (`fits` said it
        does); returns the listing its checkpoint holds."""
        for seq, reply, fetched_at in batch:
            self.entries[seq] = Entry(reply, fetched_at, durable=False)
        self._in_flight += len(batch)
        self.records_handed += len(batch)
        listing = self.listing(max_chars)
        self._batches.append((self.records_handed, [seq for seq, _, _ in batch], listing))
        return listing

    def made_durable(self, records_durable: int) -> None:
        """Marks durable the batches covered by `records_durable` (records of this run that
        storage made durable): `unconfirmed` then lists them, to acknowledge."""
        done = 0
        for end, seqs, listing in self._batches:
            if end > records_durable:
                break
            done += 1
            self.durable_listing = listing
            for seq in seqs:
                entry = self.entries.get(seq)
                if entry is not None:
                    entry.durable = True
        del self._batches[:done]

    def confirmed(self, seq: int) -> Entry | None:
        """The server confirmed the acknowledgement of `seq`; returns its entry, if that is
        news."""
        entry = self.entries.get(seq)
        if entry is None or not entry.durable or not entry.delivered:
            return None
        self._in_flight -= 1
        entry.confirmed = True
        self._keep(seq)
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

    def not_confirmed(self) -> list[int]:
        """The stored sequences (durable or restored) whose acknowledgement is not confirmed."""
        return [s for s, e in self.entries.items() if e.durable and not e.confirmed]

    def below_floor(self, ack_floor: int) -> tuple[int, list[Entry]]:
        """Drops the durable entries at or below the consumer's acknowledgement floor (the
        server holds them acknowledged). Returns how many, and those whose acknowledgement
        was sent and not yet confirmed: acknowledged now, as if confirmed (a confirmation can
        be lost while its acknowledgement is applied, with a server that fails over or a
        connection that drops; one that comes after this finds no entry)."""
        gone = [s for s, e in self.entries.items() if e.durable and s <= ack_floor]
        acknowledged = []
        for seq in gone:
            entry = self.entries[seq]
            if entry.delivered and entry.ack_sent_at is not None:
                acknowledged.append(entry)
            self._drop(seq)
        return len(gone), acknowledged

    def drop_restored(self) -> int:
        """Drops the restored entries that were not delivered again; returns how many."""
        gone = [s for s, e in self.entries.items() if e.reply is None and not e.confirmed]
        for seq in gone:
            self._drop(seq)
        return len(gone)

    def _drop(self, seq: int) -> None:
        entry = self.entries.pop(seq, None)
        self._kept.pop(seq, None)
        if entry is None:
            return
        if entry.delivered:
            self._in_flight -= 1
        elif entry.reply is None and not entry.confirmed:
            self._restored -= 1

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
        self._batches.clear()
        return back


# --- the record of a stop ----------------------------------------------------------------------

# Beside the checkpoint: the last acknowledgements are sent once storage is closed, after the
# last checkpoint was written, so the checkpoint lists as unconfirmed what the stop then saw
# confirmed. This file says which of them were not; the next start believes it only when the
# checkpoint on disk holds the very listing it was written about (one written late, after
# another run took the directory and checkpointed, is then ignored: it costs the next start its
# count, never a message, since only a checkpoint's listing says what is stored here).
STOP_RECORD_FILE = "nats-acks.json"
_STOP_RECORD_VERSION = 1


@dataclass(frozen=True, slots=True)
class StopRecord:
    """At a stop: the listing of the checkpoint on disk, and those of its sequences whose
    acknowledgement was still not confirmed (an `encode_ranges` text)."""

    listing: Listing
    not_confirmed: str


def write_stop_record(out: Path, record: StopRecord) -> None:
    """Replaces the stop record in `out` atomically and durably (blocking): a temporary file
    of this process's own, fsynced, renamed, the directory fsynced."""
    body = {
        "v": _STOP_RECORD_VERSION,
        "unconfirmed": record.listing.unconfirmed,
        "confirmed": record.listing.confirmed,
        "not_confirmed": record.not_confirmed,
    }
    tmp = out / f"{STOP_RECORD_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with create_file(tmp, exclusive=True) as f:
        f.write(json.dumps(body, separators=(",", ":")).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / STOP_RECORD_FILE)
    fsync_dir(out)


def read_stop_record(out: Path) -> StopRecord | None:
    """The stop record in `out`; None when there is none. Raises DescriptorError when it is
    not one shovel wrote, OSError when it cannot be read (blocking)."""
    try:
        fd = os.open(out / STOP_RECORD_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(4 * MAX_RECORD_CHARS)
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise DescriptorError(f"not JSON: {e}") from None
    if not isinstance(body, dict) or body.get("v") != _STOP_RECORD_VERSION:
        raise DescriptorError("not a stop record of this shovel")
    texts = [body.get(k) for k in ("unconfirmed", "confirmed", "not_confirmed")]
    if not all(isinstance(t, str) for t in texts):
        raise DescriptorError("a listing is not text")
    unconfirmed, confirmed, not_confirmed = (str(t) for t in texts)
    # Checked as the checkpoint's listing is: ranges, and no more of them than it may hold.
    decode_ranges(not_confirmed)
    return StopRecord(Listing(unconfirmed, confirmed), not_confirmed)
