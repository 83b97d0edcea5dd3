"""No password or token in anything shovel writes: usage errors (through the flag and through
SHOVEL_SOURCE), start-up refusals, the log of a run that cannot connect or is refused by the
server, the stop report, and /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from tests.helpers import ERROR_LINE, Shovel, free_port, http_get, wait_until
from tests.helpers.natsservers import assert_refused_at_each_attempt, server_binary

PASSWORD = "S3cret-Pa55"
TOKEN = "Tok3n-XYZ-987"
# Every form the secret may take in what shovel writes.
FORMS = (PASSWORD, "S3cret", "Pa55", TOKEN, "XYZ-987")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for form in FORMS:
            assert form not in text, f"{form!r} leaked:\n{text}"


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
    return subprocess.run(
        [sys.executable, "-m", "shovel", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


BAD_SOURCES = [
    f"nats://alice:{PASSWORD}@host/S?consumer=c&batch=0",
    f"nats://alice:{PASSWORD}@host/S?batch=5",
    f"nats://alice:{PASSWORD}@host/S?consumer=c&nope=1",
    f"nats://alice:{PASSWORD}@host/S?consumer=c&consumer=d",
    f"nats://alice:{PASSWORD}@bad_host!/S?consumer=c",
    f"nats://alice:{PASSWORD}@host:99999/S?consumer=c",
    f"nats://alice:{PASSWORD}@host/bad.stream?consumer=c",
    f"nats://alice:{PASSWORD}@host",
    f"nats://alice:{PASSWORD}@host/S?consumer=bad.name",
    # Typed unencoded: '/' and '@' inside the password.
    "nats://alice:S3cret/Pa55@host/S?consumer=c&batch=0",
    "nats://alice:S3cret@Pa55@host/S?consumer=c&batch=0",
    # Percent-encoded.
    "nats://alice:S3cret%2DPa55@host/S?consumer=c&batch=0",
    f"nats://{TOKEN}@host/S?consumer=c&batch=0",
    f"nats://{TOKEN}@host/S",
]


@pytest.mark.parametrize("source", BAD_SOURCES)
@pytest.mark.parametrize("given", ["flag", "environment", "with --follow"])
def test_a_bad_nats_url_is_refused_without_its_secret(source: str, given: str) -> None:
    if given == "flag":
        r = _run(["--source", source])
    elif given == "environment":
        r = _run([], {"SHOVEL_SOURCE": source})
    else:
        r = _run(["--source", source, "--follow"])
    assert r.returncode == 2, r
    assert ERROR_LINE.match(r.stderr), r.stderr
    assert_no_secret(r.stdout, r.stderr)


def _write_config(directory: Path, port: int) -> Path:
    conf = directory / "server.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{directory / "js"}" }}\n'
        f'authorization {{ user: alice, password: "{PASSWORD}" }}\n'
    )
    return conf


async def _create_stream(port: int) -> None:
    nc = await nats.connect(f"nats://alice:{PASSWORD}@127.0.0.1:{port}")
    try:
        await nc.jetstream().add_stream(StreamConfig(name="S", subjects=["s.>"]))
        await nc.publish("s.x", b"one")
        await nc.flush()
    finally:
        await nc.close()


def _start_server(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """A server that requires alice's password, with stream S; its log in server.log."""
    with (directory / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [server_binary(), "-c", str(_write_config(directory, port))],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    asyncio.run(asyncio.wait_for(_wait_and_create(port), 30))
    return server


@pytest.mark.parametrize("case", ["refused by the server", "nothing listening", "connected"])
def test_a_run_with_credentials_never_writes_them(tmp_path: Path, case: str) -> None:
    port = free_port()
    server = None
    if case != "nothing listening":
        server = _start_server(tmp_path, port)
    password = PASSWORD if case == "connected" else "Wr0ng-" + PASSWORD
    out = tmp_path / "out"
    metrics = free_port()
    s = Shovel(
        ["--source", f"nats://alice:{password}@127.0.0.1:{port}/S?consumer=c",
         "--output-dir", out, "--metrics-port", str(metrics), "--status-interval-s", "1",
         "--log-level", "DEBUG"],
        tmp_path / "log",
    )  # fmt: skip
    try:
        if case == "connected":
            wait_until(lambda: "shovel started" in s.stderr, what="the start line")
            s.wait_for_log("status: read 1 records")
        else:
            # Each attempt is a line: a WARNING (no server), an ERROR (the server refused it).
            wait_until(
                lambda: s.stderr.count(" WARNING ") + s.stderr.count(" ERROR ") >= 2,
                what="two connection attempts",
            )
        code, body = http_get(metrics, "/metrics")
        assert code == 200
    finally:
        s.signal(signal.SIGTERM)
        exit_code = s.wait()
        if server is not None:
            server.terminate()
            server.wait(30)
    assert exit_code == 0, s.stderr
    report = (out / "last-stop.json").read_text()
    assert_no_secret(s.stderr, body, report)
    assert "Wr0ng" not in s.stderr + body + report


async def _wait_and_create(port: int) -> None:
    while True:
        try:
            await _create_stream(port)
            return
        except (OSError, nats.errors.Error):
            await asyncio.sleep(0.05)


def test_a_wrong_password_is_refused_at_each_attempt_until_the_connect_timeout(
    tmp_path: Path,
) -> None:
    """Each attempt is refused with the server's reason, an ERROR line each (one per
    authentication error the server logs; the server may log one more, an attempt under way
    at the timeout); at the connect timeout the run exits 1 and says why, in the log and in
    the report; no form of the password anywhere."""
    port = free_port()
    server = _start_server(tmp_path, port)
    out = tmp_path / "out"
    try:
        source = f"nats://alice:Wr0ng-{PASSWORD}@127.0.0.1:{port}/S?consumer=c"
        s = Shovel(
            ["--source", source, "--output-dir", out, "--nats-connect-timeout-s", "3.5"],
            tmp_path / "log",
        )
        code = s.wait()
    finally:
        server.terminate()
        server.wait(30)
    err = s.stderr
    refusal = f"127.0.0.1:{port} refused the connection: Authorization Violation"
    attempts = assert_refused_at_each_attempt(out, err, code, refusal, 3.5)
    refused = (tmp_path / "server.log").read_text().count('authentication error - User "alice"')
    assert attempts <= refused <= attempts + 1, (refused, err)
    assert_no_secret(err, (out / "last-stop.json").read_text())
    assert "Wr0ng" not in err + (out / "last-stop.json").read_text()
