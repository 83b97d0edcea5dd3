"""A NATS stream moved into another stream (`--source nats://` into `--sink nats://`): shovel
SIGKILLed twice and the server SIGKILLed and restarted in the middle, and still every source
message is in the target stream exactly once, byte for byte.

A source message is acknowledged only once the target stream has acknowledged its record, and
the target's last message carries the source's ledger (its descriptor): a message the killed
run had fetched comes back after ack_wait and is stored then, once. The moments of the kills
are counts of messages in the target, drawn from a seeded generator."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
from collections import Counter
from pathlib import Path

from nats.js import JetStreamContext

from tests.helpers import Shovel, wait_until
from tests.helpers.natsink import make_stream, read_subject
from tests.helpers.natsservers import (
    Cluster,
    create_stream,
    differences,
    msg_id,
    on_servers,
    payload,
    publish,
    running_cluster,
)

MESSAGES = 20_000
TARGET = "T"
SUBJECT = "T.moved"


def _held(cluster: Cluster) -> int:
    async def count(js: JetStreamContext) -> int:
        return (await js.stream_info(TARGET)).state.messages

    return on_servers(cluster, count)


def _settled(cluster: Cluster) -> bool:
    """Everything stored in the target and nothing left with the consumer."""

    async def look(js: JetStreamContext) -> bool:
        consumer = await js.consumer_info("S", "mover")
        held = (await js.stream_info(TARGET)).state.messages
        return held >= MESSAGES and consumer.num_pending == 0 and consumer.num_ack_pending == 0

    return on_servers(cluster, look)


def _records(cluster: Cluster) -> list[dict[str, str | int]]:
    return [json.loads(m.data) for m in read_subject(cluster, TARGET, SUBJECT)]


def test_a_stream_moved_into_a_stream_through_kills_holds_each_message_once(
    tmp_path: Path,
) -> None:
    rng = random.Random(18)
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", 1))
        asyncio.run(make_stream(cluster, TARGET))
        asyncio.run(publish(cluster, "S", 0, MESSAGES))
        args = [
            "--source",
            cluster.source("S", "mover", "&ack_wait_s=2&batch=500"),
            "--sink",
            f"nats://{cluster.urls}/{TARGET}?subject={SUBJECT}",
            "--metrics-port",
            "0",
        ]
        moments = sorted(rng.sample(range(1_000, MESSAGES - 3_000), 3))
        for n, moment in enumerate(moments):
            with Shovel(args, tmp_path / f"run{n}.log") as run:
                wait_until(
                    lambda: _held(cluster) >= moment or run.proc.poll() is not None,  # noqa: B023
                    what=f"{moment} messages in the target",
                )
                assert run.proc.poll() is None, run.stderr
                if n == 1:
                    # The server goes, and comes back with its store: the run reconnects.
                    cluster.servers[0].kill()
                    cluster.servers[0].start()
                    after = moment + 500
                    wait_until(
                        lambda: _held(cluster) >= after or run.proc.poll() is not None,  # noqa: B023
                        what="the run to go on after the server came back",
                    )
                run.signal(signal.SIGKILL)
                run.wait()
        with Shovel(args, tmp_path / "last.log") as last:
            wait_until(lambda: _settled(cluster), what="every message moved and acknowledged")
            last.signal(signal.SIGTERM)
            assert last.wait() == 0, last.stderr
        records = _records(cluster)
    seqs = [int(r["seq"]) for r in records]
    assert Counter(seqs) == Counter(range(1, MESSAGES + 1)), differences(seqs, MESSAGES)
    for r in records:
        i = int(r["seq"]) - 1
        assert (r["subject"], r["id"]) == ("S.orders", msg_id(i))
        assert base64.b64decode(str(r["data"])) == payload(i)
