"""NATS benchmark: one shovel replica, and three, against the server's own publish rate.

Starts a JetStream server (or, with --servers 3, a 3-server cluster with the stream on all
three) on loopback, publishes --messages messages of --payload-bytes as fast as the server
stores them (the baseline: the server's own ingest rate on this machine), then drains the
stream with one shovel replica through one durable consumer, and with three replicas through
another. A drain is timed from the replicas' start until the consumer's acknowledgement floor
reaches the last message (every message stored durably and acknowledged), and checked: every
message stored, none twice within one output directory.

Usage, from the repository root:
    .venv/bin/python -m bench.nats_scaleout [--messages N] [--payload-bytes B] [--servers 1|3]
        [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.helpers import Shovel, wait_until
from tests.helpers.natsservers import (
    Cluster,
    ack_floor,
    create_stream,
    running_cluster,
    stored_messages,
)

# The other bench modules import one another by name (they run as scripts from bench/); this
# one runs with -m from the repository root, to use the tests' NATS servers too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchError, progress

STREAM = "BENCH"
# Once the last message is sent, the server stores what it was sent within this long, or the
# run fails (a message it dropped would otherwise leave the wait endless).
STORED_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Figures:
    """Messages per second: the server's ingest, and each drain; ratios to the ingest."""

    messages: int
    payload_bytes: int
    servers: int
    publish_per_s: float
    one_replica_per_s: float
    three_replicas_per_s: float
    one_replica_ratio: float
    three_replicas_ratio: float
    stored_twice_across_replicas: int


async def publish_all(cluster: Cluster, count: int, size: int) -> float:
    """Publishes `count` messages without waiting for each acknowledgement; returns the wall
    time until the stream holds all of them. Raises BenchError when it does not within
    STORED_WAIT_S of the last one."""
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        body = b"x" * size
        started = time.monotonic()
        for i in range(count):
            await nc.publish(f"{STREAM}.m", body, headers={"Nats-Msg-Id": str(i)})
            if i % 1000 == 999:
                await nc.flush()
        await nc.flush()
        deadline = time.monotonic() + STORED_WAIT_S
        # Polled: the server says nothing when it has stored the last one.
        while (held := (await js.stream_info(STREAM)).state.messages) < count:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the stream holds {held} of the {count} messages published, "
                    f"{STORED_WAIT_S:g}s after the last one was sent"
                )
            await asyncio.sleep(0.005)
        return time.monotonic() - started
    finally:
        await nc.close()


def drain(
    cluster: Cluster, work: Path, consumer: str, replicas: int, count: int
) -> tuple[float, int]:
    """Drains the stream with `replicas` shovels on `consumer`; returns the wall time and how
    many messages two output directories both hold. Raises on a lost or doubled message."""
    outs = [work / f"{consumer}-{i}" for i in range(replicas)]
    started = time.monotonic()
    procs = []
    for out in outs:
        args: list[str | Path] = [
            "--source", cluster.source(STREAM, consumer),
            "--output-dir", out,
            "--metrics-port", "0",
            "--status-interval-s", "0",
        ]  # fmt: skip
        procs.append(Shovel(args, work / f"{out.name}.log"))
    try:
        wait_until(lambda: ack_floor(cluster, STREAM, consumer) >= count, 600, "the drain")
        took = time.monotonic() - started
    finally:
        for p in procs:
            p.signal(signal.SIGTERM)
        codes = [p.wait() for p in procs]
    if any(codes):
        raise BenchError(f"a shovel replica failed: exit codes {codes}")
    spread: Counter[int] = Counter()
    for out in outs:
        seqs = Counter(m.seq for m in stored_messages(out))
        if any(n > 1 for n in seqs.values()):
            raise BenchError(f"{out} holds a message twice")
        spread.update(seqs.keys())
    if set(spread) != set(range(1, count + 1)):
        raise BenchError(f"{consumer}: {count - len(spread)} messages not stored")
    return took, sum(1 for n in spread.values() if n > 1)


def measure() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--payload-bytes", type=int, default=100)
    parser.add_argument("--servers", type=int, choices=(1, 3), default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    count = args.messages
    with tempfile.TemporaryDirectory(prefix="shovel-nats-bench-") as tmp:
        work = Path(tmp)
        with running_cluster(work, args.servers) as cluster:
            asyncio.run(create_stream(cluster, STREAM, replicas=args.servers))
            progress(f"publishing {count} messages ...")
            publish_s = asyncio.run(publish_all(cluster, count, args.payload_bytes))
            progress("one replica ...")
            one_s, _ = drain(cluster, work, "one", 1, count)
            progress("three replicas ...")
            three_s, twice = drain(cluster, work, "three", 3, count)
    publish_rate = count / publish_s
    figures = Figures(
        messages=count,
        payload_bytes=args.payload_bytes,
        servers=args.servers,
        publish_per_s=round(publish_rate),
        one_replica_per_s=round(count / one_s),
        three_replicas_per_s=round(count / three_s),
        one_replica_ratio=round(count / one_s / publish_rate, 3),
        three_replicas_ratio=round(count / three_s / publish_rate, 3),
        stored_twice_across_replicas=twice,
    )
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
    else:
        print(f"{count} messages of {args.payload_bytes} bytes, {args.servers} server(s)")
        print(f"server ingest (publish until stored): {figures.publish_per_s:>9} msg/s")
        print(
            f"shovel, 1 replica:                    {figures.one_replica_per_s:>9} msg/s"
            f"  ({figures.one_replica_ratio:.2f} x ingest)"
        )
        print(
            f"shovel, 3 replicas:                   {figures.three_replicas_per_s:>9} msg/s"
            f"  ({figures.three_replicas_ratio:.2f} x ingest)"
        )
    return 0


def main() -> int:
    try:
        return measure()
    except BenchError as e:
        progress(f"FAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
