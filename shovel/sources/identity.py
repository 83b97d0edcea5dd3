"""What the checkpoint records about the source, so that a restart resumes only the input it was
reading.

Every batch may carry a descriptor (one line of JSON) that the native client stores in the
checkpoint together with the committed offset, atomically. For a file it names the file by
device, inode and a fingerprint of its first bytes (inode numbers are reused, content is not),
the path the user named and where that path led (see rotations.py), and `base`, the stream
position where the file's byte 0 lies: offsets are positions in the stream of everything read
into this output directory, so they only grow, across rotations too, and a file position is
`offset - base`. `open_line` says that the last stored record was a final line without a
newline, completed by shovel. For a NATS stream it names the stream and the consumer (and when
each was created), and lists the stream sequences stored here whose acknowledgement the server
has not confirmed, and apart some it has (see native/src/nats/ledger.rs).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

# How many leading bytes of a file identify it (fewer while the file is shorter).
FINGERPRINT_MAX_BYTES = 1024
_VERSION = 1


class DescriptorError(ValueError):
    """The checkpoint's source descriptor cannot be read."""


def fingerprint(head: bytes) -> str:
    """The fingerprint of a file's first bytes."""
    return hashlib.blake2b(head, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class FileOrigin:
    """A file, and where its byte 0 lies in the stored stream."""

    # The file read, as found (its links resolved).
    path: str
    dev: int
    ino: int
    fp_len: int
    fp: str
    base: int
    open_line: bool = False
    # The source as the user named it (absolute, links kept): a run naming another path is
    # refused. "" in checkpoints written before shovel kept it.
    name: str = ""
    # Where the followed name led when this file was taken: the live file whose rotations it
    # and its successors are (the same as `path` unless `path` is one of those rotations).
    target: str = ""
    # When the file was born, and its modification time when shovel opened it (nanoseconds
    # since the epoch; 0: not known): what tells the rotations made after it (rotations.py),
    # even once the file itself is gone. 0 in checkpoints written before shovel kept them.
    mtime_ns: int = 0
    born_ns: int = 0

    @property
    def live(self) -> str:
        """The resolved path of the live file this one is, or was rotated from."""
        return self.target or self.path

    def same_inode(self, st: os.stat_result) -> bool:
        """Whether `st` is the same inode on the same device."""
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def matches_head(self, head: bytes) -> bool:
        """Whether `head` (a file's first bytes, at least `fp_len` of them) has this
        fingerprint."""
        return len(head) >= self.fp_len and fingerprint(head[: self.fp_len]) == self.fp

    def describe(self) -> str:
        """For messages: the path and the inode."""
        return f"{self.path} (inode {self.ino})"


@dataclass(frozen=True, slots=True)
class GeneratorOrigin:
    """The deterministic generator: offsets are sequence numbers."""


@dataclass(frozen=True, slots=True)
class StreamOrigin:
    """A stream (stdin, a FIFO): offsets count the bytes read, and each run appends."""

    name: str


@dataclass(frozen=True, slots=True)
class NatsOrigin:
    """A NATS JetStream stream read through a durable consumer: offsets are stream sequences.

    `stored` lists, as ranges "A-B" or "A" joined by commas, the sequences stored in this
    output directory whose acknowledgement the server had not confirmed, and `acked` some whose
    acknowledgement it had (see native/src/nats/ledger.rs): a redelivery of one of them is
    acknowledged, not stored again."""

    stream: str
    consumer: str
    created: str
    stored: str = ""
    # When the consumer was created ("" in checkpoints written before shovel kept it): one
    # deleted and made again starts over from the stream's first message.
    consumer_created: str = ""
    # "" in checkpoints written before shovel listed confirmed ones.
    acked: str = ""


Origin = FileOrigin | GeneratorOrigin | StreamOrigin | NatsOrigin


def kind_of(origin: Origin) -> str:
    """A short name of the kind of source, for messages."""
    if isinstance(origin, FileOrigin):
        return f"the file {origin.describe()}"
    if isinstance(origin, GeneratorOrigin):
        return "the generator"
    if isinstance(origin, NatsOrigin):
        return f"the NATS stream {origin.stream} (consumer {origin.consumer})"
    return f"a stream ({origin.name})"


def encode(origin: Origin) -> str:
    """The one-line text stored in the checkpoint."""
    if isinstance(origin, FileOrigin):
        body: dict[str, object] = {
            "kind": "file",
            "path": origin.path,
            "dev": origin.dev,
            "ino": origin.ino,
            "fp_len": origin.fp_len,
            "fp": origin.fp,
            "base": origin.base,
        }
        if origin.open_line:
            body["open_line"] = True
        if origin.name:
            body["name"] = origin.name
        if origin.target and origin.target != origin.path:
            body["target"] = origin.target
        if origin.mtime_ns:
            body["mtime_ns"] = origin.mtime_ns
        if origin.born_ns:
            body["born_ns"] = origin.born_ns
    elif isinstance(origin, GeneratorOrigin):
        body = {"kind": "generate"}
    elif isinstance(origin, NatsOrigin):
        body = {
            "kind": "nats",
            "stream": origin.stream,
            "consumer": origin.consumer,
            "created": origin.created,
            "stored": origin.stored,
        }
        if origin.consumer_created:
            body["consumer_created"] = origin.consumer_created
        if origin.acked:
            body["acked"] = origin.acked
    else:
        body = {"kind": "stream", "name": origin.name}
    # ensure_ascii keeps any path on one line of plain text.
    return json.dumps({"v": _VERSION, **body}, separators=(",", ":"), ensure_ascii=True)


def _int(body: dict[str, object], key: str) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DescriptorError(f"field {key!r} is not a whole number >= 0: {value!r}")
    return value


def _str(body: dict[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise DescriptorError(f"field {key!r} is not text: {value!r}")
    return value


def decode(text: str) -> Origin | None:
    """The origin stored in a checkpoint; None when there is none (a new output directory, or
    one written before shovel recorded its source). Raises DescriptorError."""
    if not text:
        return None
    try:
        body = json.loads(text)
    except ValueError as e:
        raise DescriptorError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise DescriptorError("not a JSON object")
    if body.get("v") != _VERSION:
        raise DescriptorError(f"unknown version {body.get('v')!r} (this shovel reads {_VERSION})")
    kind = body.get("kind")
    if kind == "generate":
        return GeneratorOrigin()
    if kind == "stream":
        return StreamOrigin(_str(body, "name"))
    if kind == "nats":
        return NatsOrigin(
            stream=_str(body, "stream"),
            consumer=_str(body, "consumer"),
            created=_str(body, "created"),
            stored=_str(body, "stored"),
            consumer_created=_str(body, "consumer_created") if "consumer_created" in body else "",
            acked=_str(body, "acked") if "acked" in body else "",
        )
    if kind == "file":
        fp_len = _int(body, "fp_len")
        if fp_len > FINGERPRINT_MAX_BYTES:
            raise DescriptorError(f"fingerprint length {fp_len} is over {FINGERPRINT_MAX_BYTES}")
        open_line = body.get("open_line", False)
        if not isinstance(open_line, bool):
            raise DescriptorError(f"field 'open_line' is not true or false: {open_line!r}")
        return FileOrigin(
            path=_str(body, "path"),
            dev=_int(body, "dev"),
            ino=_int(body, "ino"),
            fp_len=fp_len,
            fp=_str(body, "fp"),
            base=_int(body, "base"),
            open_line=open_line,
            name=_str(body, "name") if "name" in body else "",
            target=_str(body, "target") if "target" in body else "",
            mtime_ns=_int(body, "mtime_ns") if "mtime_ns" in body else 0,
            born_ns=_int(body, "born_ns") if "born_ns" in body else 0,
        )
    raise DescriptorError(f"unknown source kind {kind!r}")


def read_head(path: Path | str, fd: int | None = None) -> bytes:
    """The first FINGERPRINT_MAX_BYTES bytes of a file (fewer if it is shorter); blocking."""
    if fd is not None:
        return os.pread(fd, FINGERPRINT_MAX_BYTES, 0)
    with open(path, "rb") as f:
        return f.read(FINGERPRINT_MAX_BYTES)
