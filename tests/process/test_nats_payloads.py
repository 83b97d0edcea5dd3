"""What the NATS source stores of the messages themselves: random binary payloads up to the
server's max_payload, each with its Nats-Msg-Id, stored byte-exact; and a message whose header
block is not UTF-8."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import WAIT_S, Shovel, assert_clean_stderr, stored_bytes, wait_until
from tests.helpers.natsservers import (
    Cluster,
    ack_floor,
    create_stream,
    msg_id,
    publish,
    running_cluster,
    stored_messages,
)

# The server's max_payload: the header block and the payload of a message together.
MAX_PAYLOAD = 16 * 1024


def header_bytes(i: int) -> int:
    """The size of message i's header block as nats-py writes it:
    `NATS/1.0\\r\\nNats-Msg-Id: ID\\r\\n\\r\\n`."""
    return len(f"NATS/1.0\r\nNats-Msg-Id: {msg_id(i)}\r\n\r\n")


def random_payload(i: int) -> bytes:
    """Message i's payload: random bytes, from empty to as long as max_payload allows beside
    its header block (the first and last few sizes always among them), mostly short."""
    most = MAX_PAYLOAD - header_bytes(i)
    rng = random.Random(i)
    edges = [0, 1, 2, 3, most - 1, most]
    size = edges[i] if i < len(edges) else int(most * rng.random() ** 3)
    return rng.randbytes(size)


def line(seq: int, i: int) -> bytes:
    """The line shovel stores for message i at stream sequence `seq`."""
    record = {
        "seq": seq,
        "subject": "S.orders",
        "id": msg_id(i),
        "data": base64.b64encode(random_payload(i)).decode(),
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def args(cluster: Cluster, out: Path, options: str = "") -> list[str]:
    source = cluster.source("S", "c", options)
    return ["--source", source, "--output-dir", str(out), "--metrics-port", "0"]


def test_random_binary_payloads_up_to_max_payload(tmp_path: Path) -> None:
    count = 10_000
    with running_cluster(tmp_path, 1, config=[f"max_payload: {MAX_PAYLOAD // 1024}KB"]) as cluster:

        async def server_limit() -> int:
            nc = await cluster.connect()
            try:
                return nc.max_payload
            finally:
                await nc.close()

        assert asyncio.run(server_limit()) == MAX_PAYLOAD
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, count, body=random_payload))
        out = tmp_path / "out"
        with Shovel(args(cluster, out), tmp_path / "log") as s:
            wait_until(lambda: ack_floor(cluster, "S", "c") == count, what="every message stored")
            s.signal(signal.SIGTERM)
            assert s.wait() == 0, s.stderr
            assert_clean_stderr(s.stderr)
    seq = 0
    for seq, stored in enumerate(stored_lines(out), start=1):
        assert stored == line(seq, seq - 1), f"line {seq} differs"
    assert seq == count


def stored_lines(out: Path) -> Iterator[bytes]:
    """The lines of the segments of `out` (some 50 MB here), a segment at a time."""
    for segment in sorted((out / "segments").glob("*.seg")):
        yield from segment.read_bytes().splitlines(keepends=True)


# --- a header block that is not UTF-8 ---------------------------------------------------------

# The line of a connection that dropped.
DROPPED = "NATS: disconnected; reconnecting"


def hpub(port: int, subject: bytes, headers: bytes, payload: bytes) -> None:
    """Publishes one message with this header block, as raw bytes (no client checks them),
    and waits for the server to have it (a PING answered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        server = sock.makefile("rb")
        assert server.readline().startswith(b"INFO ")
        total = len(headers) + len(payload)
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
            + b"HPUB %s %d %d\r\n%s%s\r\nPING\r\n"
            % (subject, len(headers), total, headers, payload)
        )
        assert server.readline() == b"PONG\r\n"


def test_header_block_that_is_not_utf8(tmp_path: Path) -> None:
    """Message 2's id holds bytes that are not UTF-8 (between messages 1 and 3). The Python
    source stored such a message like any other, each bad byte as U+FFFD in its id: so
    should this one. As long as it is not stored, this test is an expected failure that says
    what happened.

    Seen with async-nats 0.52: its parser refuses the header block ("header isn't valid
    utf-8", an I/O error), so the connection drops and the client reconnects at once, with
    no reason logged. The message stays unacknowledged, comes again after each ack_wait and
    drops the connection each time, for ever (shovel requires max_deliver unlimited). The
    messages fetched with it are lost with it each time and come again with it: message 3
    is not stored either (messages fetched apart from it are). The stop line and the exit
    code say nothing of it."""
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, 1))
        bad = b"NATS/1.0\r\nNats-Msg-Id: bad-\xff\xfe\r\n\r\n"
        hpub(cluster.servers[0].port, b"S.orders", bad, b"poison")
        asyncio.run(publish(cluster, "S", 2, 1))
        out = tmp_path / "out"
        with Shovel(args(cluster, out, "&ack_wait_s=3"), tmp_path / "log") as s:
            # Every message acknowledged; or the connection dropped at message 2's first
            # delivery and again at the next, ack_wait later.
            wait_until(
                lambda: ack_floor(cluster, "S", "c") == 3 or s.stderr.count(DROPPED) >= 2,
                what="every message acknowledged, or two drops",
            )
            floor = ack_floor(cluster, "S", "c")
            s.signal(signal.SIGTERM)
            assert s.wait() == 0, s.stderr
            assert_clean_stderr(s.stderr)
    stored = [m.seq for m in stored_messages(out)]
    if 2 not in stored:
        assert (floor, stored[:1]) == (1, [1]), (floor, stored)
        pytest.xfail(
            "message 2 (its header block not UTF-8) is neither stored nor acknowledged: the "
            f"connection dropped at each delivery ({s.stderr.count(DROPPED)} drops), the "
            f"floor stays at 1, message 3 {'stored' if 3 in stored else 'not stored'}, exit 0"
        )
    assert stored_bytes(out).splitlines() == [
        b'{"seq":1,"subject":"S.orders","id":"order-0","data":"bXNnIDAK"}',
        b'{"seq":2,"subject":"S.orders","id":"bad-\\ufffd\\ufffd","data":"cG9pc29u"}',
        b'{"seq":3,"subject":"S.orders","id":"order-2","data":"bXNnIDIKPj8="}',
    ]
    assert DROPPED not in s.stderr
