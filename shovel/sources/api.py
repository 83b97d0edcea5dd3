"""The one lifecycle every source keeps, and its errors.

The service drives every source through the same steps, in this order, and never asks what
kind of source it holds:

  resume(offset, descriptor)  before anything is read: checks that the source continues what
                              the checkpoint describes (blocking; run off the event loop).
  open()                      connects, where there is something to connect to.
  pieces(offset)              the reader task: batches of records, and lines too long to store.
  durable_progress()          storage made more records durable (called on the event loop).
  acknowledge(durable)        a task beside reader and storage, for a source that must be told
                              what is durable; stopped once the queue is drained.
  stop_tail()                 after the reader was stopped: what it had consumed, not yet handed.
  finish(durable, timeout_s)  after storage was closed: the last acknowledgements, disconnect.
  close()                     instead of finish(), for a run that never started.
  collectors()                what the source shows on /metrics, read at scrape time.

Every step but `resume` and `pieces` has a default that does nothing, so a source implements
only what it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from shovel.batches import Piece
from shovel.sources.identity import DescriptorError, Origin, decode, kind_of

if TYPE_CHECKING:
    from prometheus_client.registry import Collector


class SourceError(Exception):
    """The source cannot be opened or read."""


class SourceMismatch(SourceError):
    """The source is not the one the output directory was storing (or cannot continue it)."""


class SourceUnavailable(SourceError):
    """The source could not be reached in the time given (no server answered): exit 1, not a
    usage error."""


@dataclass(frozen=True, slots=True)
class FollowConfig:
    """How --follow waits and decides."""

    poll_s: float
    rotated_quiet_s: float


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What a source may take from the settings."""

    chunk_bytes: int
    max_record_bytes: int
    # --generate-rate (None: not given, the generator decides).
    generate_rate: float | None = None
    # None without --follow.
    follow: FollowConfig | None = None
    queue_max_batches: int = 8
    shutdown_timeout_s: float = 20.0
    # Where a source may keep files of its own beside the checkpoint (None: nowhere).
    output_dir: Path | None = None
    # --nats-connect-timeout-s: how long opening a broker may wait for it (None: forever).
    connect_timeout_s: float | None = None


class SourceSpec(Protocol):
    """A parsed `--source`: it knows how to open its source, and what the settings and the CLI
    must check of it."""

    @property
    def followable(self) -> bool:
        """Whether --follow applies (a path)."""
        ...

    @property
    def reads_stdin(self) -> bool:
        """Whether it reads standard input (which must not be closed)."""
        ...

    def open(self, options: SourceOptions) -> Source:
        """The source, ready to resume. Raises SourceError when it cannot be used."""
        ...


_O = TypeVar("_O", bound=Origin)


class Source(ABC):
    """A source of records; see the module docstring for the order of its steps."""

    description: str
    replayable: bool
    # What the source's offsets count, for a sink that stores each record as a message:
    # "bytes" (a position in what was read), "records" (one per record), or "batch" (only a
    # batch's end is an offset, as with a NATS stream's sequences).
    offset_unit: str = "bytes"
    # With offset_unit "batch": the most records in one batch (None: no bound).
    max_batch_records: int | None = None

    def cap_record_bytes(self, limit: int) -> None:
        """Lines over `limit` bytes are set apart (rejected/) instead of stored: what a sink
        takes at most. Called before reading; nothing to do for a source of small records."""
        return

    @abstractmethod
    def resume(self, committed_offset: int, descriptor: str) -> str:
        """Checks that this source continues what the checkpoint describes (`descriptor` is
        the text the checkpoint holds, "" if none) and prepares reading from
        `committed_offset`. Blocking. Returns a phrase for the start-up log line. Raises
        SourceMismatch when resuming would store a torn, skipped or foreign record."""

    async def open(self) -> str:
        """Connects; returns a phrase for the start-up log line ("": nothing to say). Raises
        SourceError, or SourceMismatch when the source is not the one the checkpoint
        describes."""
        return ""

    @abstractmethod
    def pieces(self, start_offset: int) -> AsyncGenerator[Piece, None]:
        """Pieces from `start_offset` on, in source order; ends with a finite source."""

    def durable_progress(self) -> None:
        """Storage made more records durable (called on the event loop)."""
        return  # nothing to do for a source that is not acknowledged

    async def acknowledge(self, records_durable: Callable[[], int]) -> None:
        """Acknowledges what is durable until cancelled; `records_durable()` counts the
        records of this run that storage made durable, in the order they were handed over.
        Returns at once for a source that is not acknowledged."""
        return  # nothing to do for a source that is not acknowledged

    def stop_tail(self) -> list[Piece]:
        """After the reader was stopped: the pieces of data already consumed but not yet
        yielded (a partial last line). Empty for a replayable source, which reads it again."""
        return []

    async def finish(self, records_durable: int, timeout_s: float) -> None:
        """After storage was closed: acknowledges what is durable, gives back the rest, and
        disconnects, within `timeout_s`."""
        return  # nothing to do for a source that is not acknowledged

    async def close(self) -> None:
        """Disconnects without acknowledging anything (a run that never started)."""
        return  # nothing to do for a source that is not acknowledged

    def collectors(self) -> list[Collector]:
        """Prometheus collectors of the source's own progress, read at scrape time on the
        metrics server's threads."""
        return []


def stored_origin(
    descriptor: str,
    expected: type[_O],
    now: str,
    hint: str = "use a new --output-dir for this source",
) -> _O | None:
    """The checkpoint's origin when it is of the `expected` kind (None when it holds none);
    otherwise SourceMismatch, naming both (`now` describes the source given now) and what to
    do (`hint`)."""
    try:
        origin = decode(descriptor)
    except DescriptorError as e:
        raise SourceMismatch(f"the checkpoint's record of its source is unreadable: {e}") from e
    if origin is not None and not isinstance(origin, expected):
        raise SourceMismatch(
            f"this output directory holds records from {kind_of(origin)}, and the source now "
            f"is {now}; the two must not be mixed ({hint})"
        )
    return origin
