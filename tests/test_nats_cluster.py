"""Scale-out on a real 3-server JetStream cluster: 3 shovel replicas share one durable consumer
of a stream kept on all 3 servers, while a publisher writes messages with ids.

Phase 1 stops and restarts replicas with SIGTERM at random moments: at its end every message
is stored exactly once across all output directories. Phase 2 also SIGKILLs a server (started
again later) and a replica: every message is still stored, never twice within one output
directory; a message stored in two directories is one a crash left unacknowledged, so only
phase 2 has any, and no more than the killed processes held.

The sizes default to what CI can afford (about 40 s); raise them for a soak, e.g.
`SHOVEL_NATS_MESSAGES=100000 SHOVEL_NATS_RATE=2000 make test-python`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import nats
import nats.errors
import pytest

from tests.helpers import Shovel, assert_clean_stderr, handles_sigterm, wait_until
from tests.natsservers import (
    Cluster,
    Publisher,
    create_stream,
    msg_id,
    payload,
    running_cluster,
    stored_messages,
)

MESSAGES = int(os.environ.get("SHOVEL_NATS_MESSAGES", "6000"))
RATE = float(os.environ.get("SHOVEL_NATS_RATE", "400"))
SEED = int(os.environ.get("SHOVEL_NATS_SEED", str(random.randrange(1 << 30))))
REPLICAS = 3
BATCH = 50
# What one replica may hold fetched and unacknowledged (natssource.py: batch * (queue + 4)).
HELD = BATCH * (8 + 4)
# Short, so that what a killed replica held comes back soon; longer than the shutdown timeout.
ACK_WAIT_S = 4
SHUTDOWN_S = 3


class Replica:
    """One shovel replica: its output directory, and its runs one after another."""

    def __init__(self, index: int, cluster: Cluster, tmp_path: Path) -> None:
        self.index = index
        self.out = tmp_path / f"replica{index}"
        self.tmp_path = tmp_path
        self.source = cluster.source("ORDERS", "shovel", f"&batch={BATCH}&ack_wait_s={ACK_WAIT_S}")
        self.runs = 0
        self.proc: Shovel | None = None

    def start(self) -> None:
        self.runs += 1
        self.proc = Shovel(
            [
                "--source", self.source,
                "--output-dir", self.out,
                "--metrics-port", "0",
                "--status-interval-s", "0",
                "--shutdown-timeout-s", str(SHUTDOWN_S),
                "--fsync-interval-ms", "20",
            ],
            self.tmp_path / f"replica{self.index}.run{self.runs}.log",
        )  # fmt: skip
        # A SIGTERM before Python has its handler would kill it: not what is tested here.
        pid = self.proc.proc.pid
        wait_until(lambda: handles_sigterm(pid), what=f"replica {self.index} to handle SIGTERM")

    def stop(self) -> None:
        """SIGTERM: must exit 0 with everything it read durable."""
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        code = self.proc.wait()
        assert code == 0, f"replica {self.index} exited {code}:\n{self.proc.stderr}"
        assert_clean_stderr(self.proc.stderr)
        self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None


def ack_floor(cluster: Cluster) -> int:
    """The consumer's acknowledgement floor, from whichever server answers (0 if none)."""

    async def ask() -> int:
        nc = await nats.connect([s.url for s in cluster.servers if s.proc is not None])
        try:
            info = await nc.jetstream().consumer_info("ORDERS", "shovel", timeout=2)
        finally:
            await nc.close()
        return info.ack_floor.stream_seq if info.ack_floor is not None else 0

    try:
        return asyncio.run(ask())
    except (nats.errors.Error, TimeoutError, OSError):
        return 0


def churn(replicas: list[Replica], rng: random.Random, publisher: Publisher) -> None:
    """Until the publisher is done: every 0.3-1.2 s, a random replica is stopped with SIGTERM
    and started again."""
    while not publisher.done:
        time.sleep(rng.uniform(0.3, 1.2))
        replica = rng.choice(replicas)
        replica.stop()
        replica.start()


def check_stored(replicas: list[Replica], count: int) -> Counter[int]:
    """Every message 0..count-1 is stored byte-exact with its id, and none twice in one output
    directory. Returns in how many directories each stream sequence is."""
    spread: Counter[int] = Counter()
    ids: set[str] = set()
    for r in replicas:
        stored = stored_messages(r.out)
        seqs = Counter(m.seq for m in stored)
        twice = [seq for seq, n in seqs.items() if n > 1]
        assert not twice, f"replica {r.index} stored sequences {twice[:10]} more than once"
        for m in stored:
            assert m.msg_id is not None
            i = int(m.msg_id.removeprefix("order-"))
            assert (m.msg_id, m.data) == (msg_id(i), payload(i))
            ids.add(m.msg_id)
        spread.update(seqs.keys())
    missing = {msg_id(i) for i in range(count)} - ids
    assert not missing, f"{len(missing)} messages never stored, e.g. {sorted(missing)[:5]}"
    return spread


@pytest.mark.timeout(600)
def test_replicas_share_a_consumer_through_stops_and_crashes(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"SHOVEL_NATS_SEED={SEED}")
    half = MESSAGES // 2
    with running_cluster(tmp_path, 3) as cluster:
        asyncio.run(create_stream(cluster, "ORDERS", replicas=3))
        replicas = [Replica(i, cluster, tmp_path) for i in range(REPLICAS)]
        try:
            # Phase 1: graceful stops only.
            for r in replicas:
                r.start()
            publisher = Publisher(cluster, "ORDERS", 0, half, RATE)
            churn(replicas, rng, publisher)
            publisher.join()
            wait_until(lambda: ack_floor(cluster) >= half, what="phase 1 acknowledged")
            for r in replicas:
                r.stop()
            spread = check_stored(replicas, half)
            assert max(spread.values()) == 1, "a graceful stop stored a message twice"
            assert all(r.out.exists() for r in replicas)

            # Phase 2: also a server and a replica killed.
            for r in replicas:
                r.start()
            publisher = Publisher(cluster, "ORDERS", half, MESSAGES - half, RATE)
            time.sleep(rng.uniform(0.5, 1.5))
            victim_server = rng.choice(cluster.servers)
            victim_server.kill()
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice(replicas)
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.0))
            victim.start()
            churn(replicas, rng, publisher)
            publisher.join()
            victim_server.start()
            wait_until(lambda: ack_floor(cluster) >= MESSAGES, what="phase 2 acknowledged")
            for r in replicas:
                r.stop()
        finally:
            for r in replicas:
                if r.running():
                    assert r.proc is not None
                    r.proc.proc.kill()
                    r.proc.wait()
    spread = check_stored(replicas, MESSAGES)
    twice = sorted(seq for seq, n in spread.items() if n > 1)
    print(f"stored in two directories after the crashes: {len(twice)}")
    # Only what the killed replica held, and what the others held unconfirmed when the server
    # died, can be stored twice.
    assert len(twice) <= HELD * (1 + REPLICAS)
    assert all(seq > half for seq in twice)
