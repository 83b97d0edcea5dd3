"""What a demo run stored, counted from its files alone.

The Python client's store is OUTPUT/python-store/records.ndjson; the native client's is the
concatenation of OUTPUT/segments/*.seg up to the length its checkpoint makes durable (what a
restart keeps); a JetStream stream's (the clients of SINK_CLIENTS) is what the demo read back
from it after the run, a payload a line, in OUTPUT/HELD_FILE (sinkstream.py). Every stored line
must be, byte for byte, the generator's record for its sequence number; lost and duplicated
records follow from those numbers and how far the reader read.

A count is only as final as the run it counts: when the run's last process was stopped before
it finished (a restart that was killed), a record it had not stored yet is not lost, since a
later restart would read it again from the client's checkpoint: such records are uncounted. So
are those a stream read back only in part may hold in the messages that were not read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shovel._native import read_checkpoint
from shovel.demo.child import SINK_CLIENTS
from shovel.demo.pyclient import RECORDS_FILE, STORE_DIR, read_committed
from shovel.sources import generated_record

SEGMENTS_DIR = "segments"
# A JetStream stream's messages after the run, read back: each payload and a newline.
HELD_FILE = "stream-held.ndjson"
_SEQ_PREFIX = b'{"seq":'


def stored_bytes(directory: Path, client: str) -> bytes:
    """The bytes the store holds: for the native client, only what its checkpoint covers."""
    if client == "python" or client in SINK_CLIENTS:
        path = (
            directory / HELD_FILE
            if client in SINK_CLIENTS
            else directory / STORE_DIR / RECORDS_FILE
        )
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
    checkpoint = read_checkpoint(directory)
    durable = checkpoint.bytes if checkpoint else 0
    segments = sorted((directory / SEGMENTS_DIR).glob("*.seg"))
    return b"".join(p.read_bytes() for p in segments)[:durable]


class LiveCount:
    """Records stored so far, cheaply, for the timeline (the final count is `tally`'s)."""

    def __init__(self, directory: Path, client: str) -> None:
        self._directory = directory
        self._client = client
        self._seen = 0
        self._lines = 0

    def now(self) -> int:
        """Records stored at this moment."""
        if self._client != "python":
            checkpoint = read_checkpoint(self._directory)
            return checkpoint.records if checkpoint else 0
        try:
            with (self._directory / STORE_DIR / RECORDS_FILE).open("rb") as f:
                f.seek(self._seen)
                new = f.read()
        except FileNotFoundError:
            return 0
        self._seen += len(new)
        self._lines += new.count(b"\n")
        return self._lines


def resume_offset(directory: Path, client: str) -> int:
    """Where a restart over `directory` would resume reading: the client's checkpoint."""
    if client == "python":
        return read_committed(directory)
    checkpoint = read_checkpoint(directory)
    return checkpoint.committed_offset if checkpoint else 0


@dataclass(frozen=True, slots=True)
class Tally:
    """A run's accounting. read = stored + lost + uncounted - duplicated holds when nothing
    stored was never read (`unread` == 0) and every stored line is a true record (`invalid` ==
    0). A count with `uncounted` > 0 is incomplete: `lost` is then what is certainly lost."""

    # Records 0..read-1 were read (by the last run or, after a restart, an earlier one).
    read: int
    # Lines stored, repeats included.
    stored: int
    # Distinct records stored.
    distinct: int
    # Records read and never stored.
    lost: int
    # Stored lines that repeat a record stored before.
    duplicated: int
    # Distinct records stored that were never read (must be 0).
    unread: int
    # Stored lines that are not a generator record (must be 0).
    invalid: int
    # Records read and not stored that are not known to be lost either: the count could not
    # be completed (the run's figures say why). 0: the count is complete.
    uncounted: int = 0


def count_lines(data: bytes, parse: Callable[[bytes], int | None]) -> tuple[Counter[int], int]:
    """How many times each number is stored in `data`, by `parse` of each line (without its
    newline; None: not a true record), and how many lines are not true records."""
    lines = data.split(b"\n")
    # A store ends with a newline; anything after the last one is a torn line.
    invalid = 1 if lines[-1] else 0
    numbers: Counter[int] = Counter()
    for line in lines[:-1]:
        number = parse(line)
        if number is None:
            invalid += 1
        else:
            numbers[number] += 1
    return numbers, invalid


def tally(
    directory: Path,
    client: str,
    read: int,
    resume_at: int | None = None,
    unseen: int | None = 0,
) -> Tally:
    """Counts `directory`'s store against `read`. With `resume_at` (the run's last process did
    not finish: a restart would read on from there), the records from it on that were not
    stored are uncounted, not lost. With `unseen` (a stream read back in part: the messages it
    holds that were not read back; None: unknown how many), as many of the records not seen as
    those messages may hold are uncounted, not lost."""
    seqs, invalid = count_lines(stored_bytes(directory, client), _seq_of)
    distinct = len(seqs)
    unread = sum(1 for seq in seqs if seq >= read)
    missing = read - (distinct - unread)
    uncounted = missing if unseen is None else min(missing, unseen)
    if resume_at is not None:
        uncounted = sum(1 for seq in range(resume_at, read) if seq not in seqs)
    return Tally(
        read=read,
        stored=sum(seqs.values()),
        distinct=distinct,
        lost=missing - uncounted,
        duplicated=sum(seqs.values()) - distinct,
        unread=unread,
        invalid=invalid,
        uncounted=uncounted,
    )


def _seq_of(line: bytes) -> int | None:
    """The sequence number of a generator record, or None if `line` is not exactly one."""
    if not line.startswith(_SEQ_PREFIX):
        return None
    digits = line[len(_SEQ_PREFIX) : line.find(b",")]
    if not digits.isdigit():
        return None
    seq = int(digits)
    return seq if generated_record(seq) == line + b"\n" else None
