"""The metrics server of a real `python -m shovel` under careless and hostile clients: idle
connections by the thousand, clients that send nothing, a source path that is not UTF-8, an
IPv6 address, a port another shovel holds."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shovel.service.metrics import MAX_CONNECTIONS, READ_TIMEOUT_S
from tests.helpers import (
    WAIT_S,
    Shovel,
    assert_clean_stderr,
    committed,
    free_port,
    http_get,
    run_shovel,
    wait_until,
)

QUIET = ["--status-interval-s", "0"]
IDLE_CLIENTS = 2000


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^Threads:\s*(\d+)$", status, re.MULTILINE)
    assert m is not None
    return int(m.group(1))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _healthy(port: int) -> bool:
    try:
        return http_get(port, "/healthz") == (200, "ok\n")
    except OSError:
        return False


@contextlib.contextmanager
def _running(tmp_path: Path, port: int, *extra: str) -> Iterator[Shovel]:
    """shovel on the endless generator with metrics on `port`, stopped (exit 0) at the end."""
    s = Shovel(
        [
            "--source",
            "generate",
            "--output-dir",
            tmp_path / "out",
            "--metrics-port",
            str(port),
            *QUIET,
            *extra,
        ],
        tmp_path / "log",
    )
    try:
        s.wait_for_log("metrics on http://")
        yield s
    finally:
        if s.proc.poll() is None:
            s.signal(signal.SIGTERM)
        code = s.wait()
    assert code == 0, s.stderr
    assert_clean_stderr(s.stderr)


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room for the test's own sockets, and (inherited) for shovel's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE_CLIENTS + 500
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the descriptor limit {hard} is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_descriptors")
def test_thousands_of_idle_connections_hold_no_threads_and_healthz_still_answers(
    tmp_path: Path,
) -> None:
    port = free_port()
    with _running(tmp_path, port) as s:
        wait_until(lambda: _healthy(port), what="healthz")
        before = _threads(s.proc.pid)
        clients = []
        try:
            for _ in range(IDLE_CLIENTS):
                with contextlib.suppress(OSError):
                    clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert len(clients) > IDLE_CLIENTS // 2
            # Each probe is a new connection, among thousands that never send anything.
            wait_until(lambda: _healthy(port), what="healthz among idle connections")
            assert http_get(port, "/metrics")[0] == 200
            assert _threads(s.proc.pid) <= before + 2, "a thread per connection"
            # Connections beyond the bound were closed; shovel's descriptors stay few.
            assert _descriptors(s.proc.pid) < MAX_CONNECTIONS + 100
        finally:
            for c in clients:
                c.close()


@pytest.mark.parametrize("sent", [b"", b"GET /metr"], ids=["nothing", "half a request line"])
def test_a_client_that_stops_sending_is_disconnected(tmp_path: Path, sent: bytes) -> None:
    port = free_port()
    with _running(tmp_path, port):
        with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S + WAIT_S) as c:
            c.sendall(sent)
            # The server closes it without an answer, well before this read's own timeout
            # (which would raise, failing the test).
            answered = b""
            while chunk := c.recv(4096):
                answered += chunk
            assert answered == b""
        assert _healthy(port)


def test_a_source_path_that_is_not_utf8_is_a_label_and_every_scrape_succeeds(
    tmp_path: Path,
) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.log"
    with open(raw, "wb") as f:
        f.write(b"one\ntwo\n")
    port = free_port()
    out = tmp_path / "out"
    s = Shovel(
        ["--source", os.fsdecode(raw), "--follow", "--output-dir", out, "--metrics-port",
         str(port), *QUIET],
        tmp_path / "log",
    )  # fmt: skip
    try:
        wait_until(lambda: committed(out) == 8, what="both lines committed")
        for _ in range(3):
            code, text = http_get(port, "/metrics")
            assert code == 200, text
            assert 'shovel_source_file_info{path="' in text
            assert "caf\\\\xe9-\\\\xff.log" in text, text
    finally:
        s.signal(signal.SIGTERM)
        assert s.wait() == 0, s.stderr


def test_the_output_directory_lock_is_taken_before_the_metrics_port(tmp_path: Path) -> None:
    """A second shovel on the same directory and port is told the directory is in use (exit
    1), not that the port is; one on another directory is told how to choose another port."""
    port = free_port()
    with _running(tmp_path, port):
        code, text = run_shovel(
            ["--source", "generate", "--output-dir", tmp_path / "out", "--metrics-port",
             str(port), *QUIET],
            tmp_path / "second.log",
        )  # fmt: skip
        assert code == 1, text
        assert "cannot open it: in use by another shovel process" in text
        assert "in use" in text
        assert "metrics" not in text
        other = tmp_path / "other"
        code, text = run_shovel(
            ["--source", "generate:10", "--output-dir", other, "--metrics-port", str(port),
             *QUIET],
            tmp_path / "third.log",
        )  # fmt: skip
        assert code == 2, text
        assert f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port}" in text
        assert "choose another port, or 0 to serve none" in text
        assert_clean_stderr(text)
        # The refused run left the directory unlocked and untouched.
        code, text = run_shovel(
            ["--source", "generate:10", "--output-dir", other, "--metrics-port", "0", *QUIET],
            tmp_path / "fourth.log",
        )
        assert code == 0, text
        assert committed(other) == 10


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_metrics_host_is_served(tmp_path: Path) -> None:
    port = free_port()
    with _running(tmp_path, port, "--metrics-host", "::1") as s:
        assert f"metrics on http://[::1]:{port}/metrics" in s.stderr
        with urllib.request.urlopen(f"http://[::1]:{port}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
