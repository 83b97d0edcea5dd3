"""The `--sink nats://...` syntax: servers, stream, subject and options.

    nats://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/STREAM?subject=SUBJECT[&OPTION=VALUE...]
    tls://... the same, over TLS

The servers, credentials and TLS options are the source's (sources/nats/url.py). Options:
`subject` (required: the subject every record is published on, one the stream takes, without
wildcards; one shovel writes each subject), `batch` (records per atomic batch, 1 to 1000,
default 1000), `creds`, `tls_ca`, `tls_cert` and `tls_key`. No I/O here but the check that the
files named can be read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from shovel import natsurl
from shovel._native import SINK_MAX_BATCH

OPTIONS = ("subject", "batch", "creds", "tls_ca", "tls_cert", "tls_key")
# A subject to publish on: tokens of printable ASCII, no wildcards.
_SUBJECT = re.compile(r"[!-~]+")


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """A parsed `--sink nats://...`."""

    # Server URLs for the client, one per host (user information kept on each).
    servers: tuple[str, ...]
    stream: str
    subject: str
    batch: int = SINK_MAX_BATCH
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def describe(self) -> str:
        """For log lines: the servers without any password, the stream and the subject."""
        hosts = ",".join(natsurl.without_secret(s) for s in self.servers)
        return f"NATS JetStream {hosts} stream {self.stream} subject {self.subject}"

    def check_files(self) -> None:
        """Raises ValueError when a file an option names cannot be read."""
        for option in ("creds", "tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, option)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"cannot read the NATS {natsurl.FILES[option]} {path}")


def parse_sink(text: str) -> SinkSpec:
    """Parses a `nats://` or `tls://` sink; raises ValueError with a reason."""
    scheme = next((s for s in natsurl.SCHEMES if text.startswith(s)), None)
    if scheme is None:
        raise ValueError(
            f"a sink is a NATS JetStream stream: {natsurl.SCHEME}HOST/STREAM?subject=SUBJECT "
            f"(or {natsurl.TLS_SCHEME}...)"
        )
    servers, stream, options = natsurl.split_url(scheme, text.removeprefix(scheme), OPTIONS)
    subject = options.get("subject")
    if subject is None:
        raise ValueError("the sink needs ?subject=SUBJECT: the subject records are published on")
    tokens = subject.split(".")
    if not _SUBJECT.fullmatch(subject) or "" in tokens or {"*", ">"} & set(tokens):
        raise ValueError(
            f"bad sink subject {subject!r}: dot-separated tokens of printable ASCII, no wildcards"
        )
    if ("tls_cert" in options) != ("tls_key" in options):
        raise ValueError("sink options tls_cert and tls_key go together")
    batch = options.get("batch", str(SINK_MAX_BATCH))
    if not batch.isdigit() or not 1 <= int(batch) <= SINK_MAX_BATCH:
        raise ValueError(
            f"sink option batch must be a whole number 1-{SINK_MAX_BATCH} (records per atomic "
            f"batch), got {batch!r}"
        )
    return SinkSpec(
        servers=servers,
        stream=stream,
        subject=subject,
        batch=int(batch),
        creds=Path(options["creds"]) if "creds" in options else None,
        tls_ca=Path(options["tls_ca"]) if "tls_ca" in options else None,
        tls_cert=Path(options["tls_cert"]) if "tls_cert" in options else None,
        tls_key=Path(options["tls_key"]) if "tls_key" in options else None,
    )
