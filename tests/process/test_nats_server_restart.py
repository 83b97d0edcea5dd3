"""The only NATS server killed (SIGKILL) and started again on its port and store while shovel
reads: in the middle of the pull requests, and while acknowledgements are on their way. No
message is lost, every one is stored once, and the stop's counts are true.

A lone nats-server writes its consumers' state to disk behind the acknowledgements it
confirms: killed while acknowledgements stream in, it came back here with an acknowledgement
floor below the one it had reported (often 0; `jetstream { sync_interval: always }` changed
nothing), and delivers those messages again after ack_wait. shovel's ledger remembers, for
the run, every message stored here that left it: such a delivery is acknowledged, not stored
again. (Across a restart of shovel too, only the checkpoint's listing remains.)
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

from nats.js.api import ConsumerInfo

from tests.helpers import Shovel, assert_clean_stderr, read_checkpoint, wait_until
from tests.helpers.faults import FaultyShovel, summary
from tests.helpers.natsservers import (
    Cluster,
    Server,
    ack_floor,
    assert_exactly,
    consumer_info,
    create_stream,
    differences,
    nats_stop,
    publish,
    running_cluster,
    stored_messages,
    wait_for_consumer,
)


def source_args(cluster: Cluster, out: Path, options: str) -> list[str]:
    return [
        "--source",
        cluster.source("S", "c", options),
        "--output-dir",
        str(out),
        "--metrics-port",
        "0",
        "--shutdown-timeout-s",
        "5",
    ]


def floor_of(info: ConsumerInfo) -> int:
    return info.ack_floor.stream_seq if info.ack_floor is not None else 0


def stop_after_all_acknowledged(cluster: Cluster, s: Shovel, count: int) -> str:
    """Once the server holds every message acknowledged: SIGTERM, exit 0, a clean log with
    nothing left unacknowledged or given back; returns the log."""
    wait_until(
        lambda: ack_floor(cluster, "S", "c") == count,
        what="every message acknowledged",
    )
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert_clean_stderr(s.stderr)
    stop = nats_stop(s.stderr)
    assert (stop.awaiting, stop.given_back, stop.left_to_ack_wait) == (0, 0, 0), s.stderr
    done = summary(s.stderr)
    assert (done.committed_offset, done.undelivered) == (count, 0), s.stderr
    return s.stderr


def test_server_killed_in_the_middle_of_a_fetch(tmp_path: Path) -> None:
    """Pull requests of 1,000, 20,000 messages: the server is killed while messages are
    being delivered and acknowledged, and started again. Every message is stored, none
    twice. (What the server forgot comes again after the consumer's ack_wait, 30 s: the
    wait for every message acknowledged includes it.)"""
    count = 20_000
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, count))
        out = tmp_path / "out"

        def in_the_middle(info: ConsumerInfo) -> bool:
            assert floor_of(info) < count, "every message was acknowledged before the kill"
            return floor_of(info) > 0 and bool(info.num_ack_pending) and bool(info.num_pending)

        with Shovel(source_args(cluster, out, "&batch=1000"), tmp_path / "log") as s:
            before = wait_for_consumer(cluster, "S", "c", in_the_middle, "a fetch under way")
            server = cluster.servers[0]
            server.kill()
            server.start()
            log = stop_after_all_acknowledged(cluster, s, count)

    seqs = [m.seq for m in stored_messages(out)]
    twice = sorted(seq for seq, n in Counter(seqs).items() if n > 1)
    # Nothing lost, whatever the server forgot, and nothing stored twice: what it delivers
    # again of what it forgot is acknowledged, not stored (the ledger remembers what left it
    # stored, for the run).
    assert sorted(set(seqs)) == list(range(1, count + 1)), differences(seqs, count)
    assert not twice, (twice, floor_of(before))
    assert_exactly(out, count, in_order=False)
    assert nats_stop(log).acknowledged >= count


# The server side of a connection to `port` on 127.0.0.1, in /proc/net/tcp: its receive
# queue (bytes the server has not read) is the second half of the tx_queue:rx_queue field.
def unread_by_server(port: int) -> int:
    """The most bytes any established connection to `port` holds unread by the server."""
    local = f"0100007F:{port:04X}"
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "01":
            unread = max(unread, int(fields[4].split(":")[1], 16))
    return unread


def test_server_killed_with_acknowledgements_on_their_way(tmp_path: Path) -> None:
    """The first fsync stalls: every message is fetched, none durable. The server is frozen
    (SIGSTOP); the checkpoint lands and the acknowledgements go out, to a server that reads
    none of them; it is killed and started again. After the reconnect the acknowledgements
    are sent again and confirmed: every message stored once, in order, and the stop line
    counts each acknowledged once, with none awaiting acknowledgement."""
    count = 2000
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, count))
        out = tmp_path / "out"
        server = cluster.servers[0]

        def all_fetched(info: ConsumerInfo) -> bool:
            return info.num_pending == 0 and info.num_ack_pending == count

        # The stall is long enough to fetch them all and freeze the server on a loaded
        # machine.
        faults = "before-fsync=delay:8000*1"
        with FaultyShovel(source_args(cluster, out, ""), tmp_path / "log", faults) as s:
            wait_for_consumer(cluster, "S", "c", all_fetched, "every message fetched")
            freeze(server)
            try:
                cp = read_checkpoint(out)
                assert cp is None or cp.records == 0, "durable before the server was frozen"
                wait_until(lambda: records(out) == count, what="the checkpoint of every message")
                # An acknowledgement is some 80 bytes: most of them at least are in the
                # server's socket, unread.
                wait_until(
                    lambda: unread_by_server(server.port) >= count * 40,
                    what="the acknowledgements sent to the frozen server",
                )
            finally:
                server.kill()
            server.start()
            info = consumer_info(cluster, "S", "c")
            assert info is not None
            assert floor_of(info) == 0, "the killed server had applied acknowledgements"
            log = stop_after_all_acknowledged(cluster, s, count)

    assert nats_stop(log).acknowledged == count, log
    done = summary(log)
    assert (done.read, done.stored) == (count, count), log
    assert len(re.findall("NATS: reconnected to", log)) == 1, log
    assert_exactly(out, count)


def freeze(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)


def records(out: Path) -> int:
    cp = read_checkpoint(out)
    return cp.records if cp is not None else 0
