"""The native module (Rust, tokio): the storage client, the read path that feeds it, the
checkpoint reader, and the NATS JetStream source.

Imported by the storage and sources packages, `shovel.batches` and `shovel.safefiles`. The
demo's accounting, the tests and the image tests read checkpoints with `read_checkpoint`
instead of parsing the file themselves.

The client owns an output directory (locked against other processes), appends batches to
segment files in order on a tokio runtime of its own, groups fsyncs, and after each fsync
atomically persists a checkpoint with the committed source offset. No method waits for I/O
except the constructor and `close`, which release the GIL while they block. Progress is
signalled by making `notify_fd()` readable; the counters can be read at any time.

The NATS source works the same way: its connection, pull requests and acknowledgements run on
a runtime thread of its own; the event loop watches its `notify_fd()` and calls its
non-blocking methods; `restore`, `finish` and `close` block with the GIL released.

The JetStream sink too: records are published on its runtime thread, and only its `close`
blocks (with the GIL released).
"""

from os import PathLike
from pathlib import Path
from typing import TypeAlias, final

__all__ = [
    "DIR_MODE",
    "FAULT_INJECTION",
    "FILE_MODE",
    "LOCK_FILE",
    "NATS_ACK_LATENCY_BOUNDS",
    "NATS_STALL_WARN_S",
    "RETRIES",
    "SINK_HEADER_ROOM",
    "SINK_MAX_BATCH",
    "Checkpoint",
    "Chunk",
    "ClientClosedError",
    "CloseReport",
    "CloseTimeoutError",
    "CorruptStoreError",
    "DirectoryLockedError",
    "FinishReport",
    "NatsError",
    "NatsMismatch",
    "NatsRefused",
    "NatsSink",
    "NatsSource",
    "NatsSourceError",
    "NatsStats",
    "NatsUnavailable",
    "ReadFile",
    "Records",
    "SinkError",
    "SinkOpened",
    "SinkStats",
    "Splitter",
    "Stats",
    "StorageClient",
    "StorageError",
    "StorageIOError",
    "birth_time_ns",
    "nats_record_line",
    "read_checkpoint",
    "retry_wait_s",
    "retryable_errno",
]

FAULT_INJECTION: bool
"""Whether this build honours SHOVEL_FAULTS (development builds only)."""
LOCK_FILE: str
"""The lock file's name in the output directory."""
FILE_MODE: int
"""The mode of every file shovel creates in the output directory (before the umask)."""
DIR_MODE: int
"""The mode of every directory shovel creates there (before the umask)."""
RETRIES: int
"""How many times a failed write is retried after its first attempt (an fsync never is)."""

def birth_time_ns(path: str | PathLike[str]) -> int | None:
    """When the file at `path` was born (nanoseconds since the epoch; a link itself, not what
    it leads to), or None where the filesystem does not say. Raises OSError naming `path`."""

def retryable_errno(errno: int) -> bool:
    """Whether a failed file operation with this errno is retried, as the store retries its
    own: an I/O error, an interrupted or busy call, a full disk or quota."""

def retry_wait_s(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (from 1): doubling from 50 ms, at most
    2 s."""

class StorageError(Exception):
    """Base class of every storage client error."""

class StorageIOError(StorageError):
    """An operating-system error while writing, syncing or checkpointing."""

    errno: int | None
    filename: Path

class DirectoryLockedError(StorageError):
    """Another process holds the output directory."""

class CorruptStoreError(StorageError):
    """The output directory is damaged in a way a crash cannot leave."""

class ClientClosedError(StorageError):
    """The client is closed and takes no more writes."""

class CloseTimeoutError(StorageError):
    """close() gave up before everything was durable."""

    writes_not_durable: int
    records_not_durable: int
    bytes_not_durable: int
    committed_offset: int

@final
class Stats:
    """A point-in-time copy of the client's counters."""

    @property
    def inflight_writes(self) -> int:
        """Writes accepted and not yet durable."""
    @property
    def inflight_bytes(self) -> int:
        """Bytes of those writes."""
    @property
    def inflight_records(self) -> int:
        """Records of those writes."""
    @property
    def records_durable(self) -> int:
        """Records made durable since open."""
    @property
    def bytes_durable(self) -> int:
        """Bytes made durable since open."""
    @property
    def fsyncs(self) -> int:
        """fsync groups completed (each followed by a checkpoint)."""
    @property
    def committed_offset(self) -> int:
        """Source offset of the last persisted checkpoint."""
    @property
    def errors(self) -> int:
        """Errors met by the writer."""
    @property
    def durable_seq(self) -> int:
        """Sequence number of the last durable write."""
    @property
    def stored_bytes_total(self) -> int:
        """Bytes in all segments per the last checkpoint, across runs."""
    @property
    def retries(self) -> int:
        """Failed writes or checkpoints that were retried."""

@final
class CloseReport:
    """What a successful `close()` reports."""

    @property
    def committed_offset(self) -> int:
        """The committed source offset on disk."""
    @property
    def records_total(self) -> int:
        """Records in all segments, across runs."""
    @property
    def bytes_total(self) -> int:
        """Bytes in all segments, across runs."""
    @property
    def records_durable(self) -> int:
        """Records made durable since open."""
    @property
    def bytes_durable(self) -> int:
        """Bytes made durable since open."""

def read_checkpoint(directory: str | PathLike[str]) -> Checkpoint | None:
    """The checkpoint of the output directory `directory`, or None when it has none yet (or
    the directory does not exist). Reads the file with the GIL released. Raises
    CorruptStoreError when the checkpoint is damaged, StorageIOError when it cannot be read."""

@final
class Checkpoint:
    """What an output directory's checkpoint says is durable, as `read_checkpoint` found it."""

    @property
    def committed_offset(self) -> int:
        """Source offset up to which every record is durable."""
    @property
    def records(self) -> int:
        """Records in all segments, across runs."""
    @property
    def bytes(self) -> int:
        """Bytes in all segments, across runs."""
    @property
    def segment(self) -> int:
        """Index of the segment being appended to."""
    @property
    def segment_len(self) -> int:
        """Durable length of that segment; recovery cuts anything past it."""
    @property
    def source(self) -> str:
        """The source descriptor the committed offset belongs to ("" when there is none)."""

@final
class StorageClient:
    """Owns an output directory, its lock, and a writer on a runtime thread of its own."""

    def __new__(
        cls,
        directory: str | PathLike[str],
        *,
        segment_max_bytes: int,
        fsync_interval_ms: int,
        fsync_max_bytes: int,
        max_inflight_bytes: int,
    ) -> StorageClient:
        """Locks and recovers `directory` (created if missing), then starts the writer.

        Raises DirectoryLockedError, CorruptStoreError, StorageIOError or ValueError.
        """
    def submit(
        self, data: bytes | Records, records: int, end_offset: int, source: str | None = None
    ) -> int | None:
        """Hands a batch of whole records to the writer without waiting.

        `data` is bytes (copied) or `Records` (their buffers taken over, with no copy, once
        the write is accepted; a second hand-over raises ValueError).

        `source`, when given, is the source descriptor from this write on: the checkpoints that
        cover it keep it (one line, at most 4096 bytes). Returns the write's sequence number
        (durable once `durable_seq` reaches it), or None when too many bytes are in flight.
        Raises the first storage error once one happened, ClientClosedError after close,
        ValueError if `end_offset` goes back or `source` is not one line.
        """
    @property
    def durable_seq(self) -> int:
        """Sequence number of the last durable write."""
    def stats(self) -> Stats:
        """The counters, now."""
    def check(self) -> None:
        """Raises the first storage error, if one happened."""
    def notify_fd(self) -> int:
        """File descriptor that becomes readable after durable progress or an error."""
    def take_events(self) -> list[str]:
        """Takes the messages queued for the service's log (retried errors), oldest first."""
    def drain_notifications(self) -> int:
        """Consumes pending wake-ups; returns how many there were."""
    @property
    def initial_committed_offset(self) -> int:
        """Committed source offset found at open (where the source resumes)."""
    @property
    def initial_source(self) -> str:
        """The source descriptor of the checkpoint found at open ("" if none)."""
    @property
    def initial_records(self) -> int:
        """Records stored in the directory when it was opened."""
    @property
    def initial_bytes(self) -> int:
        """Bytes stored in the directory when it was opened."""
    @property
    def recovery_notes(self) -> list[str]:
        """What recovery repaired at open, one sentence each."""
    @property
    def closed(self) -> bool:
        """Whether close has begun."""
    @property
    def directory(self) -> Path:
        """The output directory."""
    def close(self, timeout_s: float) -> CloseReport:
        """Refuses new writes, waits up to `timeout_s` for every accepted write to be durable
        and checkpointed, then stops the runtime thread. Idempotent; concurrent callers get the
        same outcome (a second caller waits for the first close, whatever its own timeout).
        Raises CloseTimeoutError (with counts) or the first storage error."""

@final
class Chunk:
    """Bytes read by `ReadFile.read`, in a reused buffer, until a `Splitter` takes them over."""

    def __len__(self) -> int: ...
    def bytes_at(self, start: int, end: int) -> bytes:
        """A copy of bytes `start..end` (clamped to the chunk). ValueError once fed."""

@final
class Records:
    """Whole records (each ending with a newline) in buffers that `StorageClient.submit`
    takes over without a copy."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes:
        """A copy of the bytes (tests, diagnostics). ValueError once handed to storage."""

_RawPiece: TypeAlias = tuple[Records, int, int] | tuple[int, bytes, bool, bool]
# A piece from `Splitter`: `(records, count, end_offset)` for a batch, `(offset, data, first,
# last)` for (part of) a line over the record limit.

@final
class ReadFile:
    """A regular file opened for reading in chunks into reused buffers."""

    def __new__(cls, path: str | PathLike[str]) -> ReadFile:
        """Opens `path` (blocking). Raises OSError (FileNotFoundError, ...) naming it."""
    def fileno(self) -> int:
        """The descriptor, for fstat and pread; ValueError after close."""
    def seek(self, pos: int) -> None:
        """Moves the read position to byte `pos`."""
    def read(self, max_bytes: int) -> Chunk:
        """Reads up to `max_bytes` with the GIL released (blocking); empty at the end."""
    def birth_time_ns(self) -> int | None:
        """When the file was born (nanoseconds since the epoch), or None where the filesystem
        does not say."""
    def pseudo_filesystem(self) -> str | None:
        """The name of the pseudo filesystem the file lives on ("proc", "sysfs", ...), or
        None for a filesystem that holds files."""
    def close(self) -> None:
        """Closes the file (a read in progress finishes first, on its own thread)."""
    @property
    def closed(self) -> bool:
        """Whether `close` was called."""

@final
class Splitter:
    """Cuts chunks at newlines into batches of whole records (a partial last line carried
    over) and sets lines over the record limit apart."""

    def __new__(cls, start_offset: int, max_record_bytes: int) -> Splitter: ...
    def feed(self, data: bytes | Chunk, skip: int = 0) -> list[_RawPiece]:
        """Adds a chunk (a Chunk is taken over, bytes are copied); its first `skip` bytes are
        consumed without being fed (only between lines, else ValueError). Returns the pieces
        it completes, in source order."""
    def set_aside_line(self) -> None:
        """Sets the next line (up to and including its newline) apart as a rejected line,
        whatever its length (ValueError in the middle of a line)."""
    def finish(self) -> list[_RawPiece]:
        """At the end of the input: an unterminated last line becomes a record, or ends the
        oversized line being streamed."""
    @property
    def offset(self) -> int:
        """Source offset just past the last byte handed out."""
    @property
    def carried(self) -> int:
        """Bytes of an incomplete record held back."""
    @property
    def rejecting_line(self) -> bool:
        """Whether an oversized line is being streamed out."""

NATS_STALL_WARN_S: float
"""How long the NATS reader waits for room before it says so (a WARNING with the cause)."""
NATS_ACK_LATENCY_BOUNDS: tuple[float, ...]
"""The upper bounds of the NATS acknowledgement latency histogram's buckets, in seconds
(+Inf not included; must match shovel/sources/nats/metrics.py)."""

def nats_record_line(seq: int, subject: str, msg_id: str | None, data: bytes) -> bytes:
    """The line the NATS source stores for a message, newline included:
    `{"seq":N,"subject":S,"id":ID,"data":B64}` as `json.dumps(..., separators=(",", ":"),
    ensure_ascii=True)` writes it, `id` only when `msg_id` is not empty. For tests: the
    service never needs it."""

class NatsError(Exception):
    """Base class of the NATS source's errors."""

class NatsRefused(NatsError):
    """The NATS source is unusable as configured (a missing stream, a consumer that could
    lose messages, a credentials file that cannot be read): a usage error, exit 2."""

class NatsMismatch(NatsError):
    """The stream or consumer is not the one the output directory was written from, or the
    checkpoint's listing cannot be read: exit 1."""

class NatsUnavailable(NatsError):
    """No NATS server accepted the connection within the connect timeout: exit 1."""

class NatsSourceError(NatsError):
    """Reading cannot go on (the consumer was deleted on the server): exit 1."""

@final
class NatsStats:
    """A point-in-time copy of the NATS source's counters (the shovel_nats_* metrics)."""

    @property
    def fetched(self) -> int:
        """Messages delivered (redeliveries included)."""
    @property
    def acked(self) -> int:
        """Deliveries the server holds acknowledged (confirmed, or passed by its floor)."""
    @property
    def redelivered(self) -> int:
        """Deliveries that were not the first of their message."""
    @property
    def skipped(self) -> int:
        """Deliveries of messages already stored here: not stored again."""
    @property
    def nacked(self) -> int:
        """Messages given back at a stop (negative acknowledgements sent)."""
    @property
    def consumer_pending(self) -> int:
        """The consumer's messages not yet delivered, at the last look."""
    @property
    def consumer_ack_pending(self) -> int:
        """The consumer's messages delivered and not acknowledged, at the last look."""
    @property
    def stalled_s(self) -> float:
        """How long the reader has waited for room, in seconds (0 when it does not wait)."""
    @property
    def stalls(self) -> int:
        """Waits for room long enough to be said."""
    @property
    def ack_latency_buckets(self) -> list[int]:
        """The acknowledgement latency histogram's cumulative counts, one per bound of
        NATS_ACK_LATENCY_BOUNDS, then +Inf."""
    @property
    def ack_latency_sum(self) -> float:
        """The sum of the latencies counted, in seconds."""
    @property
    def ack_latency_count(self) -> int:
        """How many latencies are counted."""

@final
class FinishReport:
    """What a NATS source's stop did, for its log lines."""

    @property
    def connected(self) -> bool:
        """A server was connected when the stop began (the acknowledgements could go out)."""
    @property
    def acked(self) -> int:
        """Deliveries the server holds acknowledged, over the whole run."""
    @property
    def not_confirmed(self) -> int:
        """Stored messages whose acknowledgement is not confirmed."""
    @property
    def given_back(self) -> int:
        """Negative acknowledgements sent at the stop."""
    @property
    def due_back(self) -> int:
        """Messages that were due to be given back (sent or not)."""
    @property
    def took_s(self) -> float:
        """How long the stop took, in seconds."""
    @property
    def stop_record_error(self) -> str | None:
        """Why the stop record could not be written, if it could not."""

_NatsBatch: TypeAlias = tuple[Records, int, int, str]
# A batch from `NatsSource`: `(records, count, end_offset, descriptor)`, the descriptor being
# the checkpoint's source descriptor once the batch is stored.

@final
class NatsSource:
    """The NATS JetStream source: a durable pull consumer whose messages are acknowledged
    once stored durably, on a runtime thread of its own.

    Its steps: `restore` (the checkpoint), `start_open` then `open_result` (connect, bind the
    consumer), `start_reading` then `take_batch` (each batch's records made durable are told
    with `made_durable`), `take_tail` and `finish` at a stop; `close` for a run that never
    started reading. `notify_fd()` becomes readable when there is news: the open's outcome,
    a batch, a log line (`take_events`).
    """

    def __new__(
        cls,
        *,
        servers: list[str],
        stream: str,
        consumer: str,
        subject: str | None,
        batch: int,
        ack_wait_s: float,
        max_ack_pending: int,
        max_unacked: int,
        shutdown_timeout_s: float,
        output_dir: str | PathLike[str] | None,
        creds: str | PathLike[str] | None = None,
        tls_ca: str | PathLike[str] | None = None,
        tls_cert: str | PathLike[str] | None = None,
        tls_key: str | PathLike[str] | None = None,
        connect_timeout_s: float | None = None,
    ) -> NatsSource:
        """A source, not connected: no thread, no I/O.

        `servers` are `nats://` or `tls://` URLs, user information (`user:password@` or
        `token@`, the first URL's) kept on them; `tls://` or any `tls_*` file asks for TLS
        (`tls_cert` and `tls_key` together). `ack_wait_s` and `max_ack_pending` are those of
        a consumer the source creates; it holds at most `max_unacked` messages fetched and not
        confirmed acknowledged, and asks for `batch` at a time. `connect_timeout_s` bounds the
        open (None: it waits for the servers forever). Stops are recorded in `output_dir`
        (None: nowhere). Raises ValueError on a malformed URL or value.
        """
    def restore(
        self,
        committed_offset: int,
        *,
        stored: str | None = None,
        acked: str = "",
        created: str = "",
        consumer_created: str = "",
    ) -> tuple[int, bool, str | None]:
        """Restores the ledger from the checkpoint, whose committed offset is
        `committed_offset`; `stored` and the rest are its NATS descriptor's fields (`stored`
        None: the checkpoint has none of this source's). Reads the last stop's record
        (blocking, with the GIL released). Returns `(restored, from_stop, warning)`: the
        stored messages that may await acknowledgement, whether their states come from the
        stop record, and why a stop record was ignored (a line to log). Raises NatsMismatch
        when the listing cannot be read."""
    def start_open(self) -> None:
        """Starts the runtime thread and the open (connect, look up and check the stream and
        the consumer, create it when missing); `notify_fd()` becomes readable when it ends.
        Raises OSError when the thread cannot start."""
    def open_result(self) -> str | None:
        """None while opening; then the start line's phrase. Raises NatsRefused, NatsMismatch
        or NatsUnavailable (the open's error), each time it is asked."""
    def start_reading(self, start_offset: int) -> None:
        """Starts reading after stream sequence `start_offset`. RuntimeError when not open."""
    def take_batch(self) -> _NatsBatch | None:
        """The next batch, if one is ready (None: wait for `notify_fd()`). Raises
        NatsSourceError once reading cannot go on (the consumer was deleted)."""
    def take_tail(self) -> list[_NatsBatch]:
        """At a stop, before storage is closed: every message held, in batches."""
    def made_durable(self, records_durable: int) -> None:
        """Storage made `records_durable` records of this run durable: their messages are
        acknowledged."""
    def finish(self, records_durable: int, timeout_s: float) -> FinishReport | None:
        """The stop, after storage is closed, within `timeout_s`: acknowledges what is durable,
        gives back what is not, closes the connection, records which stored messages are still
        not confirmed; then the runtime thread stops. Blocking, with the GIL released. None
        when the source never opened or already finished."""
    def close(self, timeout_s: float) -> None:
        """For a run that never started reading: stops the open, closes the connection (within
        `timeout_s`), stops the runtime thread. Blocking, with the GIL released; idempotent."""
    def notify_fd(self) -> int:
        """File descriptor that becomes readable when there is news."""
    def drain_notifications(self) -> int:
        """Consumes pending wake-ups; returns how many there were."""
    def take_events(self) -> list[tuple[int, str]]:
        """Takes the log lines said since the last call, oldest first: `(levelno, text)`,
        the level as `logging`'s number."""
    def stats(self) -> NatsStats:
        """The counters, now (from any thread)."""

# --- the JetStream sink ----------------------------------------------------------------------

# Room kept in each message for the headers: a record may be the stream's largest message
# less this.
SINK_HEADER_ROOM: int
# The most records in one atomic batch (the server's limit).
SINK_MAX_BATCH: int

class SinkError(StorageError):
    """The JetStream sink cannot go on (a stream that does not exist, a subject it does not
    take, a denied publish, another writer on the subject, no server within the connect
    timeout): exit 1, with the reason."""

@final
class SinkOpened:
    """What the sink's open found in the stream."""

    @property
    def offset(self) -> int:
        """The source offset the stream holds everything up to (0: nothing)."""
    @property
    def source(self) -> str:
        """The source descriptor stored with it ("" if none)."""
    @property
    def sequence(self) -> int:
        """The stream sequence of the last message on the subject (0: none)."""
    @property
    def messages(self) -> int:
        """Messages on the subject."""
    @property
    def atomic(self) -> bool:
        """Whether the stream takes atomic batches."""
    @property
    def record_limit(self) -> int:
        """The largest record the stream takes."""

@final
class SinkStats:
    """A point-in-time copy of the sink's counters (the shovel_sink_* metrics)."""

    @property
    def inflight_writes(self) -> int:
        """Handed batches not yet wholly stored."""
    @property
    def inflight_records(self) -> int:
        """Records accepted and not yet acknowledged by the stream."""
    @property
    def inflight_bytes(self) -> int:
        """Their bytes."""
    @property
    def records_durable(self) -> int:
        """Records the stream acknowledged in this run."""
    @property
    def bytes_durable(self) -> int:
        """Their bytes (newlines counted)."""
    @property
    def committed_offset(self) -> int:
        """The source offset the stream holds everything up to."""
    @property
    def committed_sequence(self) -> int:
        """The stream sequence of the last message stored."""
    @property
    def retries(self) -> int:
        """Sends and read-backs tried again."""
    @property
    def errors(self) -> int:
        """Permanent errors (0 or 1)."""
    @property
    def batches(self) -> int:
        """Batches stored."""
    @property
    def fsyncs(self) -> int:
        """Always 0: the stream, not shovel, syncs."""
    @property
    def ack_latency_buckets(self) -> list[int]:
        """Cumulative counts, one per bound of NATS_ACK_LATENCY_BOUNDS, then +Inf."""
    @property
    def ack_latency_sum(self) -> float:
        """The sum of the latencies counted, in seconds."""
    @property
    def durable_seq(self) -> int:
        """The last handed batch every record of which is stored."""

@final
class NatsSink:
    """A JetStream stream as storage, on a runtime thread of its own: records published in
    atomic batches, exactly once, the stream holding the resume point."""

    def __new__(
        cls,
        servers: list[str],
        stream: str,
        subject: str,
        *,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        connect_timeout_s: float | None = None,
        batch: int = 1000,
        max_inflight_bytes: int = 64 * 1024 * 1024,
        offset_unit: str = "bytes",
        writer_id: str,
    ) -> NatsSink: ...
    def notify_fd(self) -> int:
        """Readable when there is news (the open's outcome, a stored batch, a log line)."""
    def drain_notifications(self) -> None:
        """Clears the descriptor's readiness."""
    def take_events(self) -> list[tuple[int, str]]:
        """The log lines said since the last call, as (levelno, text)."""
    def opened(self) -> SinkOpened | None:
        """What the open found, once done; raises SinkError if it failed."""
    def submit(
        self, data: bytes | Records, records: int, end_offset: int, source: str | None
    ) -> int | None:
        """Hands a batch over; its sequence number, or None when the sink is full."""
    def stats(self) -> SinkStats:
        """The counters now."""
    @property
    def durable_seq(self) -> int:
        """The last handed batch every record of which is stored."""
    def check(self) -> None:
        """Raises SinkError if a permanent error has ended the writes."""
    def close(self, timeout_s: float) -> int:
        """Waits up to timeout_s for every accepted record's acknowledgement, then
        disconnects; the committed offset. Raises CloseTimeoutError or SinkError."""
