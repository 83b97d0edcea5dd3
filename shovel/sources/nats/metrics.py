"""What the NATS source shows on /metrics: its acknowledgement counters, what the server says
is pending, how long the reader waits for room, and each message's fetch-to-acknowledged time;
all read from the native source's counters (`NatsStats`) at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shovel._native import NATS_ACK_LATENCY_BOUNDS, NatsStats

ACK_LATENCY = "shovel_nats_ack_latency_seconds"


class NatsCollector(Collector):
    """The shovel_nats_* families, from the native source's counters taken at scrape time."""

    def __init__(self, stats: Callable[[], NatsStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        return _families(self._stats())


def ack_latency(s: NatsStats) -> HistogramMetricFamily:
    """The shovel_nats_ack_latency_seconds histogram, from cumulative bucket counts."""
    # As prometheus_client's Histogram writes them (0.005, 1.0, 30.0).
    bounds = [repr(float(b)) for b in NATS_ACK_LATENCY_BOUNDS] + ["+Inf"]
    return HistogramMetricFamily(
        ACK_LATENCY,
        "Time from a NATS message's fetch to its acknowledgement, once durable, as the "
        "server confirmed it or its acknowledgement floor showed it",
        buckets=list(zip(bounds, (float(n) for n in s.ack_latency_buckets), strict=True)),
        sum_value=s.ack_latency_sum,
    )


def _families(s: NatsStats) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "shovel_nats_messages_fetched",
        "Messages delivered to this replica by the NATS consumer (redeliveries included)",
        s.fetched,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_acked",
        "Deliveries acknowledged once durable (redeliveries of messages stored here too), as "
        "the NATS server confirmed or its acknowledgement floor showed",
        s.acked,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_redelivered",
        "Messages delivered more than once (after a crash, a stop, or an expired ack_wait)",
        s.redelivered,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_skipped",
        "Redeliveries of messages already stored in this output directory (acknowledged, "
        "not stored again)",
        s.skipped,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_nacked",
        "Messages given back at a stop, not durable here, for another replica to take",
        s.nacked,
    )
    yield GaugeMetricFamily(
        "shovel_nats_consumer_pending_messages",
        "Messages of the stream not yet delivered by the consumer (from the server)",
        s.consumer_pending,
    )
    yield GaugeMetricFamily(
        "shovel_nats_consumer_ack_pending_messages",
        "Messages delivered by the consumer and not yet acknowledged, all replicas (from the "
        "server)",
        s.consumer_ack_pending,
    )
    yield GaugeMetricFamily(
        "shovel_nats_read_stalled_seconds",
        "How long the NATS reader has been waiting for room to pull or to hand over what it "
        "fetched (its own messages not yet durable or not confirmed acknowledged); 0 while "
        "it is not",
        s.stalled_s,
    )
    yield CounterMetricFamily(
        "shovel_nats_read_stalls",
        "Waits of the NATS reader for room that lasted long enough to be logged as a WARNING",
        s.stalls,
    )
    yield ack_latency(s)
