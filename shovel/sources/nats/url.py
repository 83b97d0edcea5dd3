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
from urllib.parse import parse_qsl, unquote

from shovel.redact import remember
from shovel.sources.api import Source, SourceError, SourceOptions

SCHEME = "nats://"
TLS_SCHEME = "tls://"
SCHEMES = (SCHEME, TLS_SCHEME)
DEFAULT_PORT = 4222
DEFAULT_BATCH = 256
MAX_BATCH = 10_000
# --fsync-interval-ms when it is not given. A message is acknowledged only once durable, and a
# replica holds a bounded number of messages fetched and not acknowledged (NatsSource's
# max_unacked, 3,072 by default): with fsyncs 100 ms apart (the default for other sources) it
# spends most of its time waiting for the next one. Measured with one replica on the
# development machine: about 25,000 messages/s at 100 ms, 80,000-100,000 at 10 ms
# (bench/run.py nats).
FSYNC_INTERVAL_MS = 10
# What JetStream accepts in stream and consumer names (no subject tokens, wildcards or
# separators), kept a little stricter: printable ASCII only.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_SUBJECT = re.compile(r"[!-~]+")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
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
# The files an option names, and what each is called when it cannot be read.
_FILES = {
    "creds": "credentials file",
    "tls_ca": "TLS certificate authority file",
    "tls_cert": "TLS client certificate",
    "tls_key": "TLS client key",
}


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
        hosts = ",".join(_without_secret(s) for s in self.servers)
        return f"NATS JetStream {hosts} stream {self.stream} consumer {self.consumer}"

    def open(self, options: SourceOptions) -> Source:
        """The consumer, not yet connected (it connects in `open()`); the queue size and the
        shutdown timeout size it, and it records its stops in `options.output_dir`."""
        # Imported here: the NATS client is needed only by this source.
        from shovel.sources.nats.source import NatsSource  # noqa: PLC0415

        for option, what in _FILES.items():
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


def _without_secret(server: str) -> str:
    scheme = next(s for s in SCHEMES if server.startswith(s))
    rest = server.removeprefix(scheme)
    _, at, host = rest.rpartition("@")
    return scheme + (host if at else rest)


def _servers(scheme: str, userinfo: str, at: str, hosts: str) -> tuple[str, ...]:
    if at and not userinfo:
        raise ValueError("empty user before '@' in the nats:// URL")
    if not hosts:
        raise ValueError("nats:// needs at least one HOST[:PORT] before the /STREAM")
    servers = []
    for part in hosts.split(","):
        host, port = part, str(DEFAULT_PORT)
        if ":" in part and not part.endswith("]"):
            host, _, port = part.rpartition(":")
        if not host or not _HOST.fullmatch(host):
            raise ValueError(f"bad NATS server host {part!r} (expected HOST or HOST:PORT)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad NATS server port in {part!r} (expected 1-65535)")
        servers.append(f"{scheme}{userinfo + '@' if at else ''}{host}:{int(port)}")
    return tuple(servers)


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
    rest = text.removeprefix(scheme)
    # The user information ends at the last '@' before the query (no host or stream holds
    # one): a password with a '/' typed unencoded still stays in it.
    before_query, _, query = rest.partition("?")
    userinfo, at, rest = before_query.rpartition("@")
    if at:
        _, colon, password = userinfo.partition(":")
        # A password, or a token (no user); masked in every text shovel writes from now on.
        remember(password if colon else userinfo)
    hosts, slash, path = rest.partition("/")
    servers = _servers(scheme, userinfo, at, hosts)
    stream = unquote(path)
    if not slash or not stream:
        raise ValueError("nats:// needs the stream name after the servers: nats://HOST/STREAM")
    if not _NAME.fullmatch(stream):
        raise ValueError(
            f"bad stream name {stream!r}: letters, digits, '-' and '_' only (no '.', '/', "
            "spaces or wildcards)"
        )
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in OPTIONS:
            raise ValueError(f"unknown nats:// option {key!r} (known: {', '.join(OPTIONS)})")
        if key in options:
            raise ValueError(f"nats:// option {key!r} given twice")
        if not value:
            raise ValueError(f"nats:// option {key!r} needs a value")
        options[key] = value
    consumer = options.get("consumer")
    if consumer is None:
        raise ValueError(
            "nats:// needs ?consumer=NAME: the durable consumer that shovel replicas share"
        )
    if not _NAME.fullmatch(consumer):
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
