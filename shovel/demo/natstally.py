"""A NATS run's accounting: what the output directory holds, against what the server says was
acknowledged and what the consumer still delivers.

With P the messages published (stream sequences 1..published), S those stored (each stored line
must be, byte for byte, a published message: its id and its body), D those the consumer still
delivers after the run (natsfeed.py):
  lost            P minus S minus D: acknowledged and never stored, gone for good;
  stored_unacked  S and D: stored, yet delivered again (another replica would store it twice;
                  this one's restart skips it: its checkpoint lists it);
  read_returned   read, not stored, in D: comes back (safe, but only after ack_wait unless it
                  was given back at the stop). A lone consumer of a new stream is delivered
                  the stream in order, so the first `read` sequences are the ones read;
  doubled         stored lines that repeat a stream sequence.
The server's own count of acknowledged messages must be P minus D.

When the drain did not finish (natsfeed.py), D is only part of what is still deliverable, and P
minus S minus D is not lost but uncounted: the demo does not know. Only what is certainly lost
is counted lost then: stored nowhere yet acknowledged, by the server's acknowledgement floor
(every message up to it) and by its count of acknowledged messages (more acknowledged than
stored: the difference at least).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

from shovel.demo.accounting import Tally, count_lines, stored_bytes
from shovel.demo.natsfeed import Deliverable, ServerView, msg_id, payload


@dataclass(frozen=True, slots=True)
class NatsFigures:
    """A NATS run in figures (see the module docstring)."""

    published: int
    read: int
    stored: int
    # From the server just after the child exited.
    acked: int
    ack_floor: int
    num_ack_pending: int
    num_redelivered: int
    num_pending: int
    deliverable: int
    # Of those, delivered to the child before (and left unacknowledged by it).
    delivered_again: int
    # Whether the drain of what is still deliverable finished (the server had nothing left),
    # and the seconds it took.
    deliverable_complete: bool
    drain_s: float
    # Seconds from the exit to the last of those delivered again (None: none came).
    last_redelivery_s: float | None
    stored_unacked: int
    read_returned: int
    # Certainly lost; and, when the drain did not finish, those of which the demo does not
    # know whether they are lost or still deliverable (see the module docstring).
    lost: int
    doubled: int
    uncounted: int = 0
    # Why the drain did not finish (None: it did).
    drain_stalled: str | None = None

    @property
    def consistent(self) -> bool | None:
        """The server's acknowledged count is what is no longer deliverable (None: unknown,
        the drain did not finish)."""
        if not self.deliverable_complete:
            return None
        return self.acked == self.published - self.deliverable


def _published_number(line: bytes, published: int) -> int | None:
    """The stream sequence of a stored line that is exactly a published message, else None."""
    try:
        body = json.loads(line)
        seq, ident, data = body["seq"], body["id"], base64.b64decode(body["data"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if not isinstance(seq, int) or not 1 <= seq <= published or not isinstance(ident, str):
        return None
    number = ident.removeprefix("demo-")
    if not number.isdigit() or ident != msg_id(int(number)) or data != payload(int(number)):
        return None
    return seq


def nats_tally(
    directory: Path, read: int, view: ServerView, deliverable: Deliverable
) -> tuple[Tally, NatsFigures]:
    """Counts `directory`'s store against the server's figures."""
    seqs, invalid = count_lines(
        stored_bytes(directory, "native"), lambda line: _published_number(line, view.published)
    )
    stored = set(seqs)
    gone = set(range(1, view.published + 1)) - stored - deliverable.seqs
    doubled = sum(seqs.values()) - len(stored)
    lost = len(gone)
    if not deliverable.complete:
        below_floor = sum(1 for seq in gone if seq <= view.ack_floor)
        lost = min(lost, max(below_floor, view.acked - len(stored)))
    figures = NatsFigures(
        published=view.published,
        read=read,
        stored=sum(seqs.values()),
        acked=view.acked,
        ack_floor=view.ack_floor,
        num_ack_pending=view.num_ack_pending,
        num_redelivered=view.num_redelivered,
        num_pending=view.num_pending,
        deliverable=len(deliverable.seqs),
        delivered_again=len(deliverable.again),
        deliverable_complete=deliverable.complete,
        drain_s=deliverable.drain_s,
        last_redelivery_s=deliverable.last_after_exit_s,
        stored_unacked=len(stored & deliverable.seqs),
        read_returned=len(set(range(1, read + 1)) & deliverable.seqs - stored),
        lost=lost,
        doubled=doubled,
        uncounted=len(gone) - lost,
        drain_stalled=deliverable.stalled,
    )
    tally = Tally(
        read=read,
        stored=figures.stored,
        distinct=len(stored),
        lost=figures.lost,
        duplicated=doubled,
        # The first `read` sequences are the ones read (see the module docstring).
        unread=sum(1 for seq in stored if seq > read),
        invalid=invalid,
        uncounted=figures.uncounted,
    )
    return tally, figures
