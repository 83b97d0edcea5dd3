"""Every Prometheus metric shovel exports, and the HTTP endpoints /metrics, /healthz, /readyz.

Counters and gauges that mirror live state (queue depth, the native client's in-flight and
durable counters, records read) are read at scrape time by a collector, so a scrape always sees
the state of that instant, including during the drain. The server runs on its own thread and
keeps answering until the process is about to exit.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shovel.laststop import NO_REPORT_EXIT_CODE, StopReport
from shovel.source_api import AckProgress

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the collector reads at scrape time."""

    records_read: int
    bytes_read: int
    queue_records: int
    queue_batches: int
    inflight_writes: int
    inflight_bytes: int
    inflight_records: int
    records_stored: int
    bytes_stored: int
    committed_offset: int
    fsyncs: int
    storage_errors: int
    storage_retries: int
    records_rejected: int
    # A file source: its path ("" otherwise), size, read position and rotations seen.
    source_file: str = ""
    source_size: int = 0
    source_position: int = 0
    source_rotations: int = 0
    # A NATS source: its acknowledgement counters, as a copy taken with the rest.
    nats: AckProgress | None = None


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.read_state: Callable[[], LiveState] | None = None
        self.nats = False

    def collect(self) -> Iterator[Metric]:
        state = self.read_state() if self.read_state is not None else None

        def value(name: str) -> float:
            return float(getattr(state, name)) if state is not None else 0.0

        yield CounterMetricFamily(
            "shovel_records_read", "Records read from the source", value("records_read")
        )
        yield CounterMetricFamily(
            "shovel_bytes_read", "Bytes of records read from the source", value("bytes_read")
        )
        yield CounterMetricFamily(
            "shovel_records_rejected",
            "Lines over --max-record-bytes, kept in OUTPUT_DIR/rejected/ instead of stored",
            value("records_rejected"),
        )
        yield CounterMetricFamily(
            "shovel_records_stored", "Records made durable (fsynced)", value("records_stored")
        )
        yield CounterMetricFamily(
            "shovel_bytes_stored", "Bytes made durable (fsynced)", value("bytes_stored")
        )
        yield GaugeMetricFamily(
            "shovel_queue_records",
            "Records waiting in the reader-to-storage queue",
            value("queue_records"),
        )
        yield GaugeMetricFamily(
            "shovel_queue_batches",
            "Batches waiting in the reader-to-storage queue",
            value("queue_batches"),
        )
        yield GaugeMetricFamily(
            "shovel_storage_inflight_writes",
            "Writes inside the native client that are not yet durable",
            value("inflight_writes"),
        )
        yield GaugeMetricFamily(
            "shovel_storage_inflight_bytes",
            "Bytes inside the native client that are not yet durable",
            value("inflight_bytes"),
        )
        yield GaugeMetricFamily(
            "shovel_storage_inflight_records",
            "Records inside the native client that are not yet durable",
            value("inflight_records"),
        )
        yield GaugeMetricFamily(
            "shovel_committed_offset",
            "Source offset up to which every record is durable and committed",
            value("committed_offset"),
        )
        yield CounterMetricFamily(
            "shovel_storage_fsyncs",
            "fsync groups completed (each with a checkpoint)",
            value("fsyncs"),
        )
        yield CounterMetricFamily(
            "shovel_storage_retries",
            "Failed writes or checkpoints that were retried",
            value("storage_retries"),
        )
        yield CounterMetricFamily(
            "shovel_storage_errors",
            "Errors met by the native storage writer",
            value("storage_errors"),
        )
        if state is not None and state.source_file:
            info = GaugeMetricFamily(
                "shovel_source_file_info", "The file being read (1)", labels=["path"]
            )
            info.add_metric([state.source_file], 1.0)
            yield info
            yield GaugeMetricFamily(
                "shovel_source_file_size_bytes", "Size of the file being read", value("source_size")
            )
            yield GaugeMetricFamily(
                "shovel_source_position_bytes",
                "Read position in the file being read",
                value("source_position"),
            )
            yield GaugeMetricFamily(
                "shovel_source_lag_bytes",
                "Bytes of the file being read that are not read yet (size - position)",
                float(max(state.source_size - state.source_position, 0)),
            )
            yield CounterMetricFamily(
                "shovel_source_rotations",
                "Rotations of the followed file seen (rename + create, or copy + truncate)",
                value("source_rotations"),
            )
        if self.nats:
            yield from _nats_families(
                state.nats if state is not None and state.nats is not None else AckProgress()
            )


def _nats_families(p: AckProgress) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "shovel_nats_messages_fetched",
        "Messages delivered to this replica by the NATS consumer (redeliveries included)",
        p.fetched,
    )
    yield CounterMetricFamily(
        "shovel_nats_messages_acked",
        "Messages acknowledged once durable, as confirmed by the NATS server",
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


class _LastStopCollector(Collector):
    """The previous run's stop, from its persisted report (see laststop.py); nothing before
    the report is read, or when the directory has none (its first run)."""

    def __init__(self) -> None:
        self.report: StopReport | None = None

    def collect(self) -> Iterator[Metric]:
        report = self.report
        if report is None:
            return
        yield GaugeMetricFamily(
            "shovel_last_stop_exit_code",
            "Exit code of the previous run on this output directory; "
            f"{NO_REPORT_EXIT_CODE} when it ended without a report (killed, crashed, power loss)",
            float(NO_REPORT_EXIT_CODE if report.exit_code is None else report.exit_code),
        )
        known = {
            "shovel_last_stop_undelivered_records": (
                "Records the previous run read but did not make durable",
                report.undelivered,
            ),
            "shovel_last_stop_duration_seconds": (
                "How long the previous run's stop took (signal or end of source to exit)",
                report.stop_duration_s,
            ),
            "shovel_last_stop_end_timestamp_seconds": (
                "When the previous run ended (Unix time)",
                report.ended_at,
            ),
        }
        for name, (doc, value) in known.items():
            if value is not None:
                yield GaugeMetricFamily(name, doc, float(value))


class Metrics:
    """The registry and the metrics set by the service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._live = _LiveCollector()
        self.registry.register(self._live)
        self._last_stop = _LastStopCollector()
        self.registry.register(self._last_stop)
        self.write_duration = Histogram(
            "shovel_storage_write_duration_seconds",
            "Time from handing a batch to storage until it is durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.shutdown_in_progress = Gauge(
            "shovel_shutdown_in_progress",
            "1 while shovel is draining to stop",
            registry=self.registry,
        )
        self.shutdown_duration = Gauge(
            "shovel_shutdown_duration_seconds",
            "How long the last drain took (set when it ends)",
            registry=self.registry,
        )
        self.undelivered = Gauge(
            "shovel_undelivered_records",
            "Records read but not durable when shovel stopped",
            registry=self.registry,
        )
        self.nats_ack_latency = Histogram(
            "shovel_nats_ack_latency_seconds",
            "Time from a NATS message's fetch to the server's confirmation of its "
            "acknowledgement (after it is durable)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.ready = False

    def show_nats(self) -> None:
        """Exports the shovel_nats_* metrics (the source is a NATS consumer)."""
        self._live.nats = True

    def show_last_stop(self, report: StopReport) -> None:
        """Exports the previous run's stop report as the shovel_last_stop_* gauges."""
        self._last_stop.report = report

    def read_live_state_from(self, read_state: Callable[[], LiveState]) -> None:
        """Makes scrapes read `read_state()`; it runs on the server thread."""
        self._live.read_state = read_state


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # handle_request() is only called once the socket is readable: never wait in it.
    timeout = 0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


StartResponse = Callable[..., Any]


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a thread of its own."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._prometheus = make_wsgi_app(metrics.registry)
        self._server = make_server(host, port, self._app, _Server, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self.host = host
        # Written to by stop(): the serving thread wakes at once, where serve_forever() would
        # notice a shutdown only at its next poll (up to half a second, added to every stop).
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="shovel-metrics", daemon=True)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if path == "/healthz":
            start_response("200 OK", text)
            return [b"ok\n"]
        if path == "/readyz":
            if self._metrics.ready:
                start_response("200 OK", text)
                return [b"ready\n"]
            start_response("503 Service Unavailable", text)
            return [b"not ready\n"]
        if path == "/metrics":
            body: Iterable[bytes] = self._prometheus(environ, start_response)
            return body
        start_response("404 Not Found", text)
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    def start(self) -> None:
        """Starts serving."""
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                self._server.handle_request()

    def stop(self) -> None:
        """Stops serving (at once) and releases the port."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._server.server_close()
        self._wake_r.close()
        self._wake_w.close()
