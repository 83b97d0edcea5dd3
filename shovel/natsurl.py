"""What a NATS URL holds, for the source (`--source nats://...`) and the sink (`--sink
nats://...`) alike: the schemes, the servers with their user information, and the names and
files its options take. No I/O."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

from shovel.redact import remember

SCHEME = "nats://"
TLS_SCHEME = "tls://"
SCHEMES = (SCHEME, TLS_SCHEME)
DEFAULT_PORT = 4222
# What JetStream accepts in stream and consumer names (no subject tokens, wildcards or
# separators), kept a little stricter: printable ASCII only.
NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
# The files an option names, and what each is called when it cannot be read.
FILES = {
    "creds": "credentials file",
    "tls_ca": "TLS certificate authority file",
    "tls_cert": "TLS client certificate",
    "tls_key": "TLS client key",
}


def without_secret(server: str) -> str:
    """`server` without its user information."""
    scheme = next(s for s in SCHEMES if server.startswith(s))
    rest = server.removeprefix(scheme)
    _, at, host = rest.rpartition("@")
    return scheme + (host if at else rest)


def servers_of(scheme: str, userinfo: str, at: str, hosts: str) -> tuple[str, ...]:
    """One server URL per comma-separated HOST[:PORT] of `hosts`, each with the user
    information; raises ValueError with a reason."""
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


def split_url(
    scheme: str, rest: str, known: tuple[str, ...]
) -> tuple[tuple[str, ...], str, dict[str, str]]:
    """The servers, the stream and the options (each of `known`, at most once, with a value)
    of a NATS URL after its `scheme`; raises ValueError with a reason. A password or token is
    remembered, to be masked in every text shovel writes from now on."""
    # The user information ends at the last '@' before the query (no host or stream holds
    # one): a password with a '/' typed unencoded still stays in it.
    before_query, _, query = rest.partition("?")
    userinfo, at, rest = before_query.rpartition("@")
    if at:
        _, colon, password = userinfo.partition(":")
        remember(password if colon else userinfo)
    hosts, slash, path = rest.partition("/")
    servers = servers_of(scheme, userinfo, at, hosts)
    stream = unquote(path)
    if not slash or not stream:
        raise ValueError("nats:// needs the stream name after the servers: nats://HOST/STREAM")
    if not NAME.fullmatch(stream):
        raise ValueError(
            f"bad stream name {stream!r}: letters, digits, '-' and '_' only (no '.', '/', "
            "spaces or wildcards)"
        )
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in known:
            raise ValueError(f"unknown nats:// option {key!r} (known: {', '.join(known)})")
        if key in options:
            raise ValueError(f"nats:// option {key!r} given twice")
        if not value:
            raise ValueError(f"nats:// option {key!r} needs a value")
        options[key] = value
    return servers, stream, options
