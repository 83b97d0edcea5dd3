"""What the NATS source stores of the messages themselves: random binary payloads up to the
server's max_payload, each with its Nats-Msg-Id, stored byte-exact."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import Shovel, assert_clean_stderr, wait_until
from tests.helpers.natsservers import (
    Cluster,
    ack_floor,
    create_stream,
    msg_id,
    publish,
    running_cluster,
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
