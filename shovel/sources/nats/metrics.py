"""What the NATS source shows on /metrics: its acknowledgement counters, what the server says
is pending, how long the reader waits for room, and each message's fetch-to-acknowledged time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(slots=True)
class AckProgress:
    """What a source that is acknowledged has done, for metrics (read at scrape time)."""

    # Messages delivered (redeliveries included); deliveries acknowledged (once durable, or
    # at once for a message already stored here: counted once the server confirms it, or once
    # its acknowledgement floor passes it, whichever comes first); delivered more than once;
    # skipped as already stored here; given back at a stop.
    fetched: int = 0
    acked: int = 0
    redelivered: int = 0
    skipped: int = 0
    nacked: int = 0
    # From the server: messages not yet delivered, and delivered but not acknowledged.
    consumer_pending: int = 0
    consumer_ack_pending: int = 0
    # When the reader began to wait for room (time.monotonic(); 0: it is not waiting), and
    # how many of its waits lasted long enough to be logged as a stall.
    stall_started: float = 0.0
    stalls: int = 0
    # Called with each message's fetch-to-acknowledged time (the source sets it).
    ack_latency: Callable[[float], None] = field(default=lambda _s: None)


class AckProgressCollector(Collector):
    """The shovel_nats_* families, from a copy of the source's progress taken at scrape time."""

    def __init__(self, progress: AckProgress) -> None:
        self._progress = progress

    def collect(self) -> Iterator[Metric]:
        return _families(replace(self._progress))


def ack_latency_histogram() -> Histogram:
    """The shovel_nats_ack_latency_seconds histogram, not yet in any registry."""
    return Histogram(
        "shovel_nats_ack_latency_seconds",
        "Time from a NATS message's fetch to its acknowledgement, once durable, as the "
        "server confirmed it or its acknowledgement floor showed it",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        registry=None,
    )


def _families(p: AckProgress) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "shovel_nats_messages_fetched",
        "Messages delivered to this replica by the NATS consumer (redeliveries included)",
        p.fetched,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_acked",
        "Deliveries acknowledged once durable (redeliveries of messages stored here too), as "
        "the NATS server confirmed or its acknowledgement floor showed",
        p.acked,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_redelivered",
        "Messages delivered more than once (after a crash, a stop, or an expired ack_wait)",
        p.redelivered,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_skipped",
        "Redeliveries of messages already stored in this output directory (acknowledged, "
        "not stored again)",
        p.skipped,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_nacked",
        "Messages given back at a stop, not durable here, for another replica to take",
        p.nacked,
    )
    yield GaugeMetricFamily(
        "shovel_nats_consumer_pending_messages",
        "Messages of the stream not yet delivered by the consumer (from the server)",
        p.consumer_pending,
    )
    yield GaugeMetricFamily(
        "shovel_nats_consumer_ack_pending_messages",
        "Messages delivered by the consumer and not yet acknowledged, all replicas (from the "
        "server)",
        p.consumer_ack_pending,
    )
    yield GaugeMetricFamily(
        "shovel_nats_read_stalled_seconds",
        "How long the NATS reader has been waiting for room to pull or to hand over what it "
        "fetched (its own messages not yet durable or not confirmed acknowledged); 0 while "
        "it is not",
        time.monotonic() - p.stall_started if p.stall_started else 0.0,
    )
    yield CounterMetricFamily(
        "shovel_nats_read_stalls",
        "Waits of the NATS reader for room that lasted long enough to be logged as a WARNING",
        p.stalls,
    )
