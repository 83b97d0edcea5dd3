"""Scale-out on a real 3-server JetStream cluster: 3 shovel replicas share one durable consumer
of a stream kept on all 3 servers, while a publisher writes messages with ids.

Phase 1 stops and restarts replicas with SIGTERM at random moments: at its end every message
is stored exactly once across all output directories. Phase 2 also SIGKILLs a replica, phase 3
a server (started again later): every message is still stored, never twice within one output
directory. A message stored in two directories is one a crash left unacknowledged: in phase 2
one of its copies is in the killed replica's directory, and there are no more of them than it
held; in phase 3 it is one the stream already held when the server died (its acknowledgement
went through that server and was lost with it, or was due from a replica connected to it that
was stopped before it could reconnect): a message published after the server died is delivered
and acknowledged through the servers left, and is stored once.

The sizes default to what CI can afford (about a minute); raise them for a soak, e.g.
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
from tests.helpers.natsservers import (
    Cluster,
    Publisher,
    ack_floor,
    create_stream,
    msg_id,
    on_servers,
    payload,
    replica_holds,
    running_cluster,
    stored_messages,
)

MESSAGES = int(os.environ.get("SHOVEL_NATS_MESSAGES", "6000"))
RATE = float(os.environ.get("SHOVEL_NATS_RATE", "400"))
SEED = int(os.environ.get("SHOVEL_NATS_SEED", str(random.randrange(1 << 30))))
REPLICAS = 3
BATCH = 50
# Short, so that what a killed replica held comes back soon; well over the shutdown timeout,
# so that a replica stalled on a loaded machine still acknowledges in time.
ACK_WAIT_S = 10
SHUTDOWN_S = 3
HELD = replica_holds(BATCH)


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


def last_sequence(cluster: Cluster) -> int:
    """The stream's last sequence, from whichever server answers (waits while none does: the
    servers left elect a new leader)."""
    found: list[int] = []

    def answered() -> bool:
        try:
            info = on_servers(cluster, lambda js: js.stream_info("ORDERS"))
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        found.append(info.state.last_seq)
        return True

    wait_until(answered, what="the stream's last sequence")
    return found[0]


def churn(replicas: list[Replica], rng: random.Random, publisher: Publisher) -> None:
    """Until the publisher is done: every 0.3-1.2 s, a random replica is stopped with SIGTERM
    and started again."""
    while not publisher.done:
        time.sleep(rng.uniform(0.3, 1.2))
        replica = rng.choice(replicas)
        replica.stop()
        replica.start()


def check_stored(replicas: list[Replica], count: int) -> dict[int, list[int]]:
    """Every message 0..count-1 is stored byte-exact with its id, and none twice in one output
    directory. Returns, for each message, the replicas whose directories hold it."""
    spread: dict[int, list[int]] = {}
    for r in replicas:
        stored = stored_messages(r.out)
        seqs = Counter(m.seq for m in stored)
        twice = [seq for seq, n in seqs.items() if n > 1]
        assert not twice, f"replica {r.index} stored sequences {twice[:10]} more than once"
        for m in stored:
            assert m.msg_id is not None
            i = int(m.msg_id.removeprefix("order-"))
            assert (m.msg_id, m.data) == (msg_id(i), payload(i))
            spread.setdefault(i, []).append(r.index)
    missing = sorted(set(range(count)) - spread.keys())
    assert not missing, f"{len(missing)} messages never stored, e.g. {missing[:5]}"
    return spread


def twice(spread: dict[int, list[int]], first: int, end: int) -> dict[int, list[int]]:
    """The messages first..end-1 stored in more than one directory."""
    return {i: rs for i, rs in spread.items() if first <= i < end and len(rs) > 1}


@pytest.mark.timeout(600)
def test_replicas_share_a_consumer_through_stops_and_crashes(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"SHOVEL_NATS_SEED={SEED}")
    third = MESSAGES // 3
    with running_cluster(tmp_path, 3) as cluster:
        asyncio.run(create_stream(cluster, "ORDERS", replicas=3))
        replicas = [Replica(i, cluster, tmp_path) for i in range(REPLICAS)]
        try:
            # Phase 1: graceful stops only.
            for r in replicas:
                r.start()
            publisher = Publisher(cluster, "ORDERS", 0, third, RATE)
            churn(replicas, rng, publisher)
            publisher.join()
            wait_until(
                lambda: ack_floor(cluster, "ORDERS", "shovel") >= third, what="phase 1 acknowledged"
            )
            for r in replicas:
                r.stop()
            spread = check_stored(replicas, third)
            assert not twice(spread, 0, third), "a graceful stop stored a message twice"

            # Phase 2: also a replica killed.
            for r in replicas:
                r.start()
            publisher = Publisher(cluster, "ORDERS", third, third, RATE)
            time.sleep(rng.uniform(0.5, 1.5))
            victim = rng.choice(replicas)
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.0))
            victim.start()
            churn(replicas, rng, publisher)
            publisher.join()
            wait_until(
                lambda: ack_floor(cluster, "ORDERS", "shovel") >= 2 * third,
                what="phase 2 acknowledged",
            )
            for r in replicas:
                r.stop()
            spread = check_stored(replicas, 2 * third)
            crashed = twice(spread, third, 2 * third)
            print(f"stored in two directories after the replica's crash: {len(crashed)}")
            # What the killed replica had made durable but not acknowledged, and nothing else.
            assert all(victim.index in rs for rs in crashed.values()), crashed
            assert len(crashed) <= HELD
            assert not twice(spread, 0, third)

            # Phase 3: a server killed, started again later.
            for r in replicas:
                r.start()
            publisher = Publisher(cluster, "ORDERS", 2 * third, MESSAGES - 2 * third, RATE)
            time.sleep(rng.uniform(0.5, 1.5))
            victim_server = rng.choice(cluster.servers)
            victim_server.kill()
            # Read after the kill: at least every sequence the stream held when it died.
            held_at_kill = last_sequence(cluster)
            churn(replicas, rng, publisher)
            publisher.join()
            victim_server.start()
            wait_until(
                lambda: ack_floor(cluster, "ORDERS", "shovel") >= MESSAGES,
                what="phase 3 acknowledged",
            )
            for r in replicas:
                r.stop()
        finally:
            for r in replicas:
                if r.running():
                    assert r.proc is not None
                    r.proc.proc.kill()
                    r.proc.wait()
    spread = check_stored(replicas, MESSAGES)
    failed_over = twice(spread, 2 * third, MESSAGES)
    print(
        f"stored in two directories after the server's crash: {len(failed_over)} "
        f"(the stream held sequences up to {held_at_kill} when it died)"
    )
    seq_of = {m.msg_id: m.seq for r in replicas for m in stored_messages(r.out)}
    late = {i: rs for i, rs in failed_over.items() if seq_of[msg_id(i)] > held_at_kill}
    assert not late, f"published after the server died, yet stored twice: {late}"
    assert twice(spread, 0, 2 * third) == crashed
