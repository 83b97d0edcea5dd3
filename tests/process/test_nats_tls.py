"""The NATS source over TLS, against a server whose certificate the test makes (trustme): the
messages stored through `tls://` with the certificate authority given (`tls_ca`); without it,
each attempt refused for the unknown certificate, and exit 1 at the connect timeout; and a
server that asks clients for a certificate of that authority (`tls_cert`, `tls_key`)."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.helpers import Shovel, assert_clean_stderr, run_shovel, wait_until
from tests.helpers.natsservers import (
    Cluster,
    ack_floor,
    assert_exactly,
    assert_refused_at_each_attempt,
    create_stream,
    publish,
    running_cluster,
)

COUNT = 100


@dataclass(frozen=True)
class Pki:
    """A certificate authority, the server's certificate and a client's, as PEM files."""

    ca: trustme.CA
    client: trustme.LeafCert
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("shovel.example")
    directory = tmp_path / "pki"
    directory.mkdir()
    for name, blob in {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
    }.items():
        blob.write_to_path(str(directory / name))
    return Pki(ca, client, directory)


@contextmanager
def tls_server(tmp_path: Path, pki: Pki, verify_clients: bool = False) -> Iterator[Cluster]:
    """A JetStream server that speaks TLS only, with stream S holding COUNT messages; with
    `verify_clients`, it asks each client for a certificate of the authority."""
    lines = [
        "tls {",
        f'  cert_file: "{pki.path("server.pem")}"',
        f'  key_file: "{pki.path("server.key")}"',
        # The handshake's time limit (0.5 s by default): room for a loaded machine.
        "  timeout: 5",
    ]
    if verify_clients:
        lines += [f'  ca_file: "{pki.path("ca.pem")}"', "  verify: true"]
    lines.append("}")
    with running_cluster(tmp_path, 1, config=lines) as cluster:
        context = ssl.create_default_context()
        pki.ca.configure_trust(context)
        if verify_clients:
            pki.client.configure_cert(context)
        cluster.client_options = {"tls": context}
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, COUNT))
        yield cluster


def args(cluster: Cluster, out: Path, scheme: str, options: str = "") -> list[str]:
    source = f"{scheme}://127.0.0.1:{cluster.servers[0].port}/S?consumer=c{options}"
    return ["--source", source, "--output-dir", str(out), "--metrics-port", "0"]


def store_all_and_stop(cluster: Cluster, out: Path, log: Path, arguments: list[str]) -> None:
    """A run stores every message, is stopped, and exits 0."""
    with Shovel(arguments, log) as s:
        wait_until(lambda: ack_floor(cluster, "S", "c") == COUNT, what="every message acknowledged")
        s.signal(signal.SIGTERM)
        assert s.wait() == 0, s.stderr
        assert_clean_stderr(s.stderr)
    assert_exactly(out, COUNT)


def test_tls_with_the_authority_given(tmp_path: Path, pki: Pki) -> None:
    with tls_server(tmp_path, pki) as cluster:
        out = tmp_path / "out"
        options = f"&tls_ca={pki.path('ca.pem')}"
        store_all_and_stop(cluster, out, tmp_path / "log", args(cluster, out, "tls", options))


@pytest.mark.parametrize("scheme", ["tls", "nats"])
def test_tls_without_the_authority_is_refused_at_each_attempt(
    tmp_path: Path, pki: Pki, scheme: str
) -> None:
    """The server's certificate is of no authority the system trusts: each attempt fails
    the handshake (with nats:// too: the server requires TLS, and the client follows)."""
    with tls_server(tmp_path, pki) as cluster:
        out = tmp_path / "out"
        code, err = run_shovel(
            [*args(cluster, out, scheme), "--nats-connect-timeout-s", "3"], tmp_path / "log"
        )
        port = cluster.servers[0].port
        refusal = f"TLS with 127.0.0.1:{port} failed: invalid peer certificate: UnknownIssuer"
        assert_refused_at_each_attempt(out, err, code, refusal, 3)
        assert ack_floor(cluster, "S", "c") == 0


def test_client_certificate(tmp_path: Path, pki: Pki) -> None:
    """A server that verifies its clients: stored with `tls_cert` and `tls_key`; refused at
    each attempt without them."""
    with tls_server(tmp_path, pki, verify_clients=True) as cluster:
        trusted = f"&tls_ca={pki.path('ca.pem')}"
        out = tmp_path / "out"
        code, err = run_shovel(
            [*args(cluster, out, "tls", trusted), "--nats-connect-timeout-s", "3"],
            tmp_path / "log0",
        )
        port = cluster.servers[0].port
        refusal = f"TLS with 127.0.0.1:{port} failed: received fatal alert: CertificateRequired"
        assert_refused_at_each_attempt(out, err, code, refusal, 3)
        certificate = (
            f"{trusted}&tls_cert={pki.path('client.pem')}&tls_key={pki.path('client.key')}"
        )
        store_all_and_stop(cluster, out, tmp_path / "log1", args(cluster, out, "tls", certificate))
