"""The `--source nats://...` syntax: servers, stream, durable consumer and options.

    nats://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/STREAM?consumer=NAME[&OPTION=VALUE...]
    tls://... the same, over TLS

Several servers of one cluster are separated by commas (the client fails over between them).
Options: `consumer` (required: the durable pull consumer that every replica shares),
`subject` (the consumer's filter subject, when shovel creates it), `batch` (messages asked for
per pull request), `creds` (a NATS credentials file), `ack_wait_s` and `max_ack_pending` (the
consumer's settings when shovel creates it; defaults sized in nats/source.py), `tls_ca` (the
certificate authorities to trust instead of the system's), `tls_cert` and `tls_key` (a client
certificate and its key, given together). `tls://`, or any `tls_*` option, asks for TLS. No I/O
here but the check that the files named can be read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shovel.natsurl import (
    FILES,
    NAME,
    SCHEME,
    SCHEMES,
    TLS_SCHEME,
    split_url,
    without_secret,
)
from shovel.sources.api import Source, SourceError, SourceOptions

DEFAULT_BATCH = 256
MAX_BATCH = 10_000
# --fsync-interval-ms when it is not given. A message is acknowledged only once durable, and a
# replica holds a bounded number of messages fetched and not acknowledged (NatsSource's
# max_unacked, 3,072 by default): with fsyncs 100 ms apart (the default for other sources) it
# spends most of its time waiting for the next one. Measured with one replica on the
# development machine: about 25,000 messages/s at 100 ms, 80,000-100,000 at 10 ms
# (bench/run.py nats).
FSYNC_INTERVAL_MS = 10
_SUBJECT = re.compile(r"[!-~]+")
OPTIONS = (
    "consumer",
    "subject",
    "batch",
    "creds",
    "ack_wait_s",
    "max_ack_pending",
    "tls_ca",
    "tls_cert",
    "tls_key",
)


@dataclass(frozen=True, slots=True)
class NatsSpec:
    """A parsed `nats://` source."""

    # Server URLs for the client, one per host (user information kept on each).
    servers: tuple[str, ...]
    stream: str
    consumer: str
    subject: str | None = None
    batch: int = DEFAULT_BATCH
    creds: Path | None = None
    ack_wait_s: float | None = None
    max_ack_pending: int | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    followable: ClassVar[bool] = False
    reads_stdin: ClassVar[bool] = False

    def describe(self) -> str:
        """For log lines: the servers without any password, the stream and the consumer."""
        hosts = ",".join(without_secret(s) for s in self.servers)
        return f"NATS JetStream {hosts} stream {self.stream} consumer {self.consumer}"

    def open(self, options: SourceOptions) -> Source:
        """The consumer, not yet connected (it connects in `open()`); the queue size and the
        shutdown timeout size it, and it records its stops in `options.output_dir`."""
        # Imported here: the NATS client is needed only by this source.
        from shovel.sources.nats.source import NatsSource  # noqa: PLC0415

        for option, what in FILES.items():
            path = getattr(self, option)
            if path is not None and not os.access(path, os.R_OK):
                raise SourceError(f"cannot read the NATS {what} {path}")
        return NatsSource(
            self,
            options.queue_max_batches,
            options.shutdown_timeout_s,
            options.output_dir,
            options.connect_timeout_s,
        )


def _whole(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"nats:// option {name} must be a whole number {low}-{high}, got {raw!r}")
    return int(raw)


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 1.0 <= value <= 86_400.0:
        raise ValueError(f"nats:// option {name} must be seconds between 1 and 86400, got {raw!r}")
    return value


def parse_nats_source(text: str) -> NatsSpec | None:
    """A `nats://` or `tls://` source, or None for any other text; raises ValueError with a
    reason."""
    return parse_nats(text) if text.startswith(SCHEMES) else None


def parse_nats(text: str) -> NatsSpec:
    """Parses a `nats://` or `tls://` source; raises ValueError with a reason."""
    scheme = next((s for s in SCHEMES if text.startswith(s)), None)
    if scheme is None:
        raise ValueError(f"a NATS source starts with {SCHEME} or {TLS_SCHEME}")
    servers, stream, options = split_url(scheme, text.removeprefix(scheme), OPTIONS)
    consumer = options.get("consumer")
    if consumer is None:
        raise ValueError(
            "nats:// needs ?consumer=NAME: the durable consumer that shovel replicas share"
        )
    if not NAME.fullmatch(consumer):
        raise ValueError(
            f"bad consumer name {consumer!r}: letters, digits, '-' and '_' only (no '.', "
            "spaces or wildcards)"
        )
    subject = options.get("subject")
    if subject is not None and (
        not _SUBJECT.fullmatch(subject) or ".." in subject or subject.strip(".") != subject
    ):
        raise ValueError(f"bad subject filter {subject!r}")
    if ("tls_cert" in options) != ("tls_key" in options):
        raise ValueError("nats:// options tls_cert and tls_key go together")
    return NatsSpec(
        servers=servers,
        stream=stream,
        consumer=consumer,
        subject=subject,
        batch=_whole("batch", options["batch"], 1, MAX_BATCH)
        if "batch" in options
        else DEFAULT_BATCH,
        creds=Path(options["creds"]) if "creds" in options else None,
        ack_wait_s=_seconds("ack_wait_s", options["ack_wait_s"])
        if "ack_wait_s" in options
        else None,
        max_ack_pending=_whole("max_ack_pending", options["max_ack_pending"], 1, 10_000_000)
        if "max_ack_pending" in options
        else None,
        tls_ca=Path(options["tls_ca"]) if "tls_ca" in options else None,
        tls_cert=Path(options["tls_cert"]) if "tls_cert" in options else None,
        tls_key=Path(options["tls_key"]) if "tls_key" in options else None,
    )
