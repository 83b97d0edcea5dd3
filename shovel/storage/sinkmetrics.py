"""What the JetStream sink shows on /metrics: its publishes in flight, each batch's
hand-over-to-acknowledgement time, the stream sequence committed, and its retries and errors;
all read from the native sink's counters (`SinkStats`) at scrape time. The shovel_storage_*
series keep their names and meaning (records handed over and not yet durable, and so on)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shovel._native import NATS_ACK_LATENCY_BOUNDS, SinkStats

ACK_SECONDS = "shovel_sink_ack_seconds"


class SinkCollector(Collector):
    """The shovel_sink_* families, from the native sink's counters taken at scrape time."""

    def __init__(self, stats: Callable[[], SinkStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "shovel_sink_inflight_messages",
            "Records handed to the JetStream sink and not yet acknowledged by the stream",
            s.inflight_records,
        )
        yield GaugeMetricFamily(
            "shovel_sink_inflight_bytes",
            "Bytes of those records",
            s.inflight_bytes,
        )
        yield GaugeMetricFamily(
            "shovel_sink_committed_sequence",
            "Stream sequence of the last message the stream acknowledged",
            s.committed_sequence,
        )
        yield CounterMetricFamily(
            "shovel_sink_batches",
            "Atomic batches the stream acknowledged",
            s.batches,
        )
        yield CounterMetricFamily(
            "shovel_sink_retries",
            "Batches sent again and read-backs asked again after an error that can pass (no "
            "leader, no answer in time, a reconnect)",
            s.retries,
        )
        yield CounterMetricFamily(
            "shovel_sink_errors",
            "Permanent errors that ended the sink's writes (0 or 1)",
            s.errors,
        )
        bounds = [repr(float(b)) for b in NATS_ACK_LATENCY_BOUNDS] + ["+Inf"]
        yield HistogramMetricFamily(
            ACK_SECONDS,
            "Time from sending an atomic batch to the stream's acknowledgement of it "
            "(retries included)",
            buckets=list(zip(bounds, (float(n) for n in s.ack_latency_buckets), strict=True)),
            sum_value=s.ack_latency_sum,
        )
