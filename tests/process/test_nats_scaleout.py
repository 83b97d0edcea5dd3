"""Replicas on one consumer while a message stays unacknowledged elsewhere, held by a client
that fetched it and never acknowledges it or by a replica killed with SIGKILL: the consumer's
acknowledgement floor stays below that message until the server delivers it again (after
ack_wait, long here), so what the replicas keep in their ledger and list in their checkpoints
must not depend on that floor, or every replica stops pulling and the backlog is never read.

And the counts an operator reads are true: the acknowledged counter
(shovel_nats_messages_acked_total), the stop line's "N messages acknowledged, M stored messages
await acknowledgement" and the next start's "K stored messages await acknowledgement". A
confirmation can be lost while the server applies its acknowledgement (a server that fails
over, a connection that drops): the consumer's acknowledgement floor then says it; and the
last acknowledgements of a stop are confirmed after its last checkpoint was written, so the
checkpoint alone lists them as unconfirmed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from shovel.sources.identity import NatsOrigin, decode
from shovel.sources.nats.source import STALL_WARN_S
from tests.helpers import (
    WAIT_S,
    Shovel,
    assert_clean_stderr,
    free_port,
    http_get,
    metric,
    read_checkpoint,
    stored_bytes,
    wait_until,
)
from tests.helpers.faults import FaultyShovel
from tests.helpers.natsservers import (
    Cluster,
    ConfirmationDropper,
    Publisher,
    ack_floor,
    consumer_info,
    create_stream,
    msg_id,
    nats_stop,
    on_servers,
    payload,
    publish,
    replica_holds,
    running_cluster,
    stored_messages,
)

T = TypeVar("T")

# Published while the replicas run, so that the server hands each one to whichever pull
# request waits (their sequences interleave across replicas): far more than the ~600 past the
# floor at which every replica used to stop.
MESSAGES = 4000
RATE = 1500.0
BATCH = 50
# Longer than the test waits for the backlog: the held message does not come back meanwhile.
ACK_WAIT_S = 120
# What the replicas get to store the backlog; a few seconds are enough on a quiet machine.
BACKLOG_WAIT_S = 45.0
HELD = replica_holds(BATCH)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    """One JetStream server with stream S and consumer c."""
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        config = ConsumerConfig(
            durable_name="c",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=100_000,
        )
        on_servers(cluster, lambda js: js.add_consumer("S", config))
        yield cluster


def replica_args(cluster: Cluster, out: Path, metrics_port: int = 0) -> list[str]:
    return [
        "--source", cluster.source("S", "c", f"&batch={BATCH}"),
        "--output-dir", str(out),
        "--metrics-port", str(metrics_port),
        "--fsync-interval-ms", "20",
        "--shutdown-timeout-s", "5",
    ]  # fmt: skip


class Holder:
    """A client of a consumer of its own that fetched messages and never acknowledges them;
    with `in_progress_s`, it says every so often that it is working on them (+WPI), so that
    the server does not deliver them again after ack_wait. Its client runs on a thread."""

    def __init__(
        self, cluster: Cluster, count: int, consumer: str = "c", in_progress_s: float = 0.0
    ) -> None:
        self.msgs: list[Msg] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="holder", daemon=True)
        self._thread.start()
        self._nc: Client = self._call(cluster.connect())
        self._call(self._fetch(consumer, count))
        self._working = (
            asyncio.run_coroutine_threadsafe(self._in_progress(in_progress_s), self._loop)
            if in_progress_s
            else None
        )

    def _call(self, work: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(WAIT_S)

    async def _fetch(self, consumer: str, count: int) -> None:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        request = json.dumps({"batch": count, "expires": 5_000_000_000}).encode()
        await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.S.{consumer}", request, inbox)
        while len(self.msgs) < count:
            msg = await sub.next_msg(timeout=5)
            if msg.reply:
                self.msgs.append(msg)
        await sub.unsubscribe()

    async def _in_progress(self, every_s: float) -> None:
        while True:
            for m in self.msgs:
                await m.in_progress()
            await asyncio.sleep(every_s)

    @property
    def seqs(self) -> list[int]:
        return [m.metadata.sequence.stream for m in self.msgs]

    def give_back(self) -> None:
        """Negative acknowledgements: the server delivers them again at once."""

        async def nak() -> None:
            for m in self.msgs:
                await m.nak()
            await self._nc.flush()

        self._stop_working()
        self._call(nak())

    def _stop_working(self) -> None:
        if self._working is not None:
            self._working.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError):
                self._working.result(WAIT_S)
            self._working = None

    def close(self) -> None:
        self._stop_working()
        self._call(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_S)
        self._loop.close()


@contextmanager
def holding(
    cluster: Cluster, count: int, consumer: str = "c", in_progress_s: float = 0.0
) -> Iterator[Holder]:
    holder = Holder(cluster, count, consumer, in_progress_s)
    try:
        yield holder
    finally:
        holder.close()


def stored_seqs(outs: list[Path]) -> Counter[int]:
    """How many directories store each sequence; each directory holds each at most once,
    byte-exact with its id."""
    found: Counter[int] = Counter()
    for out in outs:
        stored = stored_messages(out)
        seqs = Counter(m.seq for m in stored)
        twice = [seq for seq, n in seqs.items() if n > 1]
        assert not twice, f"{out.name} stored sequences {twice[:10]} more than once"
        for m in stored:
            assert (m.msg_id, m.data) == (msg_id(m.seq - 1), payload(m.seq - 1))
        found.update(seqs)
    return found


def committed_seqs(out: Path) -> set[int]:
    """The sequences of the records `out`'s checkpoint covers (what is past it may be a line
    being written)."""
    cp = read_checkpoint(out)
    if cp is None:
        return set()
    return {json.loads(line)["seq"] for line in stored_bytes(out)[: cp.bytes].splitlines()}


def covers(outs: list[Path], wanted: set[int]) -> bool:
    """Whether the checkpoints of `outs` together cover every sequence in `wanted`."""
    return wanted <= set().union(*(committed_seqs(out) for out in outs))


@contextmanager
def reaped(procs: list[Shovel]) -> Iterator[None]:
    """Kills whatever of `procs` still runs when the block ends: a test that fails leaves no
    shovel behind, pulling from a server that is gone."""
    try:
        yield
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


def stop_all(replicas: list[Shovel]) -> None:
    for r in replicas:
        r.signal(signal.SIGTERM)
    for r in replicas:
        assert r.wait() == 0, r.stderr
        assert_clean_stderr(r.stderr)


@pytest.mark.parametrize("count", [2, 3])
def test_replicas_store_the_backlog_past_a_message_another_client_holds(
    server: Cluster, tmp_path: Path, count: int
) -> None:
    """A client fetched message 1 and holds it unacknowledged: `count` replicas still store
    every message published after it; once it gives message 1 back, they store it too."""
    asyncio.run(publish(server, "S", 0, 1))
    outs = [tmp_path / f"replica{i}" for i in range(count)]
    with holding(server, 1) as holder:
        assert holder.seqs == [1]
        replicas = [Shovel(replica_args(server, out), tmp_path / f"{out.name}.log") for out in outs]
        try:
            Publisher(server, "S", 1, MESSAGES - 1, RATE).join()
            wait_until(
                lambda: covers(outs, set(range(2, MESSAGES + 1))),
                timeout_s=BACKLOG_WAIT_S,
                what="the replicas to store every message past the held one",
            )
            holder.give_back()
            wait_until(
                lambda: covers(outs, {1}),
                timeout_s=BACKLOG_WAIT_S,
                what="the message given back to be stored",
            )
        finally:
            stop_all(replicas)
    stored = stored_seqs(outs)
    assert set(stored) == set(range(1, MESSAGES + 1))
    # Stopped with SIGTERM only, and nothing delivered twice but message 1: each stored once.
    assert all(n == 1 for n in stored.values())
    info = consumer_info(server, "S", "c")
    assert info is not None
    assert info.ack_floor is not None
    assert info.ack_floor.stream_seq == MESSAGES


def test_replicas_store_the_backlog_past_what_a_killed_replica_held(
    server: Cluster, tmp_path: Path
) -> None:
    """A replica whose fsync stalls fetches the first messages and is killed with SIGKILL:
    they stay unacknowledged until ack_wait; 2 other replicas still store every message
    published after them."""
    first = 2 * BATCH
    asyncio.run(publish(server, "S", 0, first))
    victim_out = tmp_path / "victim"
    victim = FaultyShovel(
        replica_args(server, victim_out), tmp_path / "victim.log", "before-fsync=delay:60000*1"
    )

    def fetched_all() -> bool:
        info = consumer_info(server, "S", "c")
        return info is not None and info.num_ack_pending == first

    with reaped([victim]):
        wait_until(fetched_all, what="the victim to fetch the first messages")
        victim.signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
    outs = [tmp_path / f"replica{i}" for i in range(2)]
    replicas = [Shovel(replica_args(server, out), tmp_path / f"{out.name}.log") for out in outs]
    try:
        Publisher(server, "S", first, MESSAGES - first, RATE).join()
        wait_until(
            lambda: covers(outs, set(range(first + 1, MESSAGES + 1))),
            timeout_s=BACKLOG_WAIT_S,
            what="the replicas to store every message past what the killed one held",
        )
    finally:
        stop_all(replicas)
    stored = stored_seqs(outs)
    assert set(stored) == set(range(first + 1, MESSAGES + 1))
    assert all(n == 1 for n in stored.values())
    info = consumer_info(server, "S", "c")
    assert info is not None
    assert info.num_ack_pending == first


# --- the counts -------------------------------------------------------------------------------


def stopped(run: Shovel) -> tuple[int, int]:
    """SIGTERM: exits 0; returns its stop line's acknowledged and awaiting counts."""
    run.signal(signal.SIGTERM)
    assert run.wait() == 0, run.stderr
    assert_clean_stderr(run.stderr)
    stop = nats_stop(run.stderr)
    return stop.acknowledged, stop.awaiting


def start_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "shovel started:" in line]
    assert len(lines) == 1, log
    return lines[0]


def acked(port: int) -> float:
    _, text = http_get(port, "/metrics")
    return metric(text, "shovel_nats_messages_acked_total")


def stored_all(out: Path, count: int) -> bool:
    cp = read_checkpoint(out)
    return cp is not None and cp.records == count


def test_acknowledged_count_when_confirmations_are_lost(server: Cluster, tmp_path: Path) -> None:
    """The server applies every acknowledgement, and none of its confirmations reaches
    shovel (a proxy drops them): its acknowledgement floor still says they are acknowledged.
    The counter reaches exactly the number of messages stored, and so does the stop line,
    with none awaiting acknowledgement; the next start has none either."""
    count = 1000
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    port = free_port()
    proxy = ConfirmationDropper(server.servers[0])
    args = replica_args(server, out, port)
    args[1] = f"nats://{proxy.url}/S?consumer=c&batch={BATCH}"
    runs = [Shovel(args, tmp_path / "log1")]
    try:
        with reaped(runs):
            wait_until(lambda: stored_all(out, count), what="every message stored")
            wait_until(lambda: ack_floor(server, "S", "c") == count, what="all acknowledged")
            # The floor has passed them all: the counter has every one, or soon does.
            wait_until(lambda: acked(port) == count, timeout_s=10, what=f"{count} acknowledged")
            assert proxy.dropped >= count
            assert stopped(runs[0]) == (count, 0)
            runs.append(Shovel(args, tmp_path / "log2"))
            runs[1].wait_for_log("shovel started:")
            assert "await acknowledgement" not in start_line(runs[1].stderr)
            assert stopped(runs[1]) == (0, 0)
    finally:
        proxy.stop()
    assert sorted(m.seq for m in stored_messages(out)) == list(range(1, count + 1))


def test_clean_stops_leave_none_awaiting_acknowledgement(server: Cluster, tmp_path: Path) -> None:
    """Another client holds message 1, so the acknowledgement floor stays at 0 and says
    nothing: a clean stop says how many it acknowledged and that none awaits
    acknowledgement, and the next start says the same; once message 1 is given back, it is
    stored too, each message once."""
    count = 500
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    port = free_port()
    args = replica_args(server, out, port)
    with holding(server, 1) as holder:
        runs = [Shovel(args, tmp_path / "log1")]
        with reaped(runs):
            wait_until(lambda: stored_all(out, count - 1), what="every message but the held one")
            wait_until(lambda: acked(port) == count - 1, timeout_s=10, what="all acknowledged")
            assert stopped(runs[0]) == (count - 1, 0)
            runs.append(Shovel(args, tmp_path / "log2"))
            runs[1].wait_for_log("shovel started:")
            assert "await acknowledgement" not in start_line(runs[1].stderr)
            holder.give_back()
            wait_until(lambda: stored_all(out, count), what="the message given back")
            wait_until(lambda: acked(port) == 1, timeout_s=10, what="it acknowledged")
            assert stopped(runs[1]) == (1, 0)
    assert sorted(m.seq for m in stored_messages(out)) == list(range(1, count + 1))


# --- a stall, and what a crash leaves listed -----------------------------------------------------


def test_a_stall_is_a_warning_with_its_cause_and_a_metric(server: Cluster, tmp_path: Path) -> None:
    """fsync stalls 12 s the first time: the reader fetches all it may hold (batch 50: 600)
    and waits for room. Once it has waited STALL_WARN_S it says so, naming the cause; the
    metrics show how long it has waited and count the stall; when storage goes on, it reads
    again, says so, and everything is stored and acknowledged."""
    count = 2000
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    port = free_port()
    s = FaultyShovel(
        replica_args(server, out, port), tmp_path / "log", "before-fsync=delay:12000*1"
    )
    with reaped([s]):
        s.wait_for_log("NATS: reading has waited")
        _, text = http_get(port, "/metrics")
        assert metric(text, "shovel_nats_read_stalls_total") == 1
        assert metric(text, "shovel_nats_read_stalled_seconds") >= STALL_WARN_S
        warning = [line for line in s.stderr.splitlines() if "reading has waited" in line]
        assert len(warning) == 1
        assert " WARNING " in warning[0]
        assert warning[0].endswith(
            f"for room: this replica holds the most messages it may ({HELD}) fetched and not "
            f"confirmed acknowledged: {HELD} fetched and not yet made durable by storage"
        )
        wait_until(lambda: stored_all(out, count), what="every message stored")
        s.wait_for_log("NATS: reading again after waiting")
        _, text = http_get(port, "/metrics")
        assert metric(text, "shovel_nats_read_stalls_total") == 1
        assert metric(text, "shovel_nats_read_stalled_seconds") == 0
        wait_until(lambda: acked(port) == count, timeout_s=10, what="all acknowledged")
        assert stopped(s) == (count, 0)
    assert sorted(m.seq for m in stored_messages(out)) == list(range(1, count + 1))


def test_what_a_crash_left_listed_leaves_after_ack_wait(server: Cluster, tmp_path: Path) -> None:
    """A replica crashes right after a checkpoint, before its acknowledgements; what it held
    comes back after ack_wait (2 s) to another replica, which stores it, while a client holds
    message 1 (working on it), so the acknowledgement floor stays at 0. Restarted, the crashed
    replica lists what its checkpoint lists as not confirmed only until ack_wait has passed:
    then those entries leave, and its next checkpoint lists only what it stores next."""
    config = ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT, ack_wait=2)
    on_servers(server, lambda js: js.add_consumer("S", config))
    count = 300
    asyncio.run(publish(server, "S", 0, count))
    crashed, other = tmp_path / "crashed", tmp_path / "other"

    def args(out: Path) -> list[str]:
        return [*replica_args(server, out)[2:], "--source", server.source("S", "d", "&batch=50")]

    with holding(server, 1, "d", in_progress_s=0.5) as holder:
        runs: list[Shovel] = [
            FaultyShovel(args(crashed), tmp_path / "crashed1.log", "after-checkpoint=abort@2")
        ]
        with reaped(runs):
            assert runs[0].wait() == -signal.SIGABRT
            runs.append(Shovel(args(other), tmp_path / "other.log"))

            def only_the_held_one_pending() -> bool:
                info = consumer_info(server, "S", "d")
                return info is not None and (info.num_pending, info.num_ack_pending) == (0, 1)

            wait_until(only_the_held_one_pending, what="all but the held one acknowledged")
            assert covers([crashed, other], set(range(2, count + 1)))
            assert stopped(runs[1])[1] == 0
            runs.append(Shovel(args(crashed), tmp_path / "crashed2.log"))
            restarted = runs[2]
            restarted.wait_for_log("shovel started:")
            listed = re.search(
                r"(\d+) stored messages may await acknowledgement", start_line(restarted.stderr)
            )
            assert listed, restarted.stderr
            restarted.wait_for_log(
                f"NATS: {listed.group(1)} messages stored before this start were not delivered "
                "again within ack_wait: no longer listed"
            )
            asyncio.run(publish(server, "S", count, 1))
            wait_until(lambda: count + 1 in committed_seqs(crashed), what="the new message")
            cp = read_checkpoint(crashed)
            assert cp is not None
            origin = decode(cp.source)
            assert isinstance(origin, NatsOrigin)
            assert (origin.stored, origin.acked) in ((str(count + 1), ""), ("", str(count + 1)))
            holder.give_back()
            wait_until(lambda: 1 in committed_seqs(crashed), what="the message given back")
            assert stopped(restarted)[1] == 0
    stored_seqs([crashed])
    assert covers([crashed, other], set(range(1, count + 2)))
