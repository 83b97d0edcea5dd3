"""Every Prometheus metric shovel exports, and the HTTP endpoints /metrics, /healthz, /readyz.

Counters and gauges that mirror live state (queue depth, the native client's in-flight and
durable counters, records read) are read at scrape time by a collector, so a scrape always sees
the state of that instant, including during the drain. The server runs on threads of its own,
a fixed number whatever the clients do, and keeps answering until the process is about to exit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shovel.service.laststop import NO_REPORT_EXIT_CODE, StopReport

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


# The live families: (name, counter or gauge, help, the LiveState field it shows).
_LIVE: tuple[tuple[str, type[CounterMetricFamily | GaugeMetricFamily], str, str], ...] = (
    ("shovel_records_read", CounterMetricFamily, "Records read from the source", "records_read"),
    (
        "shovel_bytes_read",
        CounterMetricFamily,
        "Bytes of records read from the source",
        "bytes_read",
    ),
    (
        "shovel_records_rejected",
        CounterMetricFamily,
        "Lines over --max-record-bytes, kept in OUTPUT_DIR/rejected/ instead of stored",
        "records_rejected",
    ),
    (
        "shovel_records_stored",
        CounterMetricFamily,
        "Records made durable (fsynced)",
        "records_stored",
    ),
    ("shovel_bytes_stored", CounterMetricFamily, "Bytes made durable (fsynced)", "bytes_stored"),
    (
        "shovel_queue_records",
        GaugeMetricFamily,
        "Records waiting in the reader-to-storage queue",
        "queue_records",
    ),
    (
        "shovel_queue_batches",
        GaugeMetricFamily,
        "Batches waiting in the reader-to-storage queue",
        "queue_batches",
    ),
    (
        "shovel_storage_inflight_writes",
        GaugeMetricFamily,
        "Writes inside the native client that are not yet durable",
        "inflight_writes",
    ),
    (
        "shovel_storage_inflight_bytes",
        GaugeMetricFamily,
        "Bytes inside the native client that are not yet durable",
        "inflight_bytes",
    ),
    (
        "shovel_storage_inflight_records",
        GaugeMetricFamily,
        "Records inside the native client that are not yet durable",
        "inflight_records",
    ),
    (
        "shovel_committed_offset",
        GaugeMetricFamily,
        "Source offset up to which every record is durable and committed",
        "committed_offset",
    ),
    (
        "shovel_storage_fsyncs",
        CounterMetricFamily,
        "fsync groups completed (each with a checkpoint)",
        "fsyncs",
    ),
    (
        "shovel_storage_retries",
        CounterMetricFamily,
        "Failed writes or checkpoints that were retried",
        "storage_retries",
    ),
    (
        "shovel_storage_errors",
        CounterMetricFamily,
        "Errors met by the native storage writer",
        "storage_errors",
    ),
)


class _SafeCollector(Collector):
    """A collector whose failure costs its own families, never the scrape: it is logged (once
    per distinct error, the first few) and the rest of /metrics is still served."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner
        self._logged: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._inner.collect())
        except Exception as e:
            if repr(e) not in self._logged and len(self._logged) < 10:
                self._logged.add(repr(e))
                log.error("metrics: collecting %s failed", type(self._inner).__name__, exc_info=e)
            return iter(())
        return iter(families)


class _LiveCollector(Collector):
    """The _LIVE families, from one LiveState read at scrape time (zeros before the run has
    one)."""

    def __init__(self) -> None:
        self.read_state: Callable[[], LiveState] | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.read_state() if self.read_state is not None else None
        for name, family, doc, field in _LIVE:
            yield family(name, doc, float(getattr(state, field)) if state is not None else 0.0)


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
        self.registry.register(_SafeCollector(self._live))
        self._last_stop = _LastStopCollector()
        self.registry.register(_SafeCollector(self._last_stop))
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
        self.ready = False

    def show(self, collectors: list[Collector]) -> None:
        """Exports more families (a source's own): each collector's failure costs only its
        own families."""
        for collector in collectors:
            self.registry.register(_SafeCollector(collector))

    def show_last_stop(self, report: StopReport) -> None:
        """Exports the previous run's stop report as the shovel_last_stop_* gauges."""
        self._last_stop.report = report

    def read_live_state_from(self, read_state: Callable[[], LiveState]) -> None:
        """Makes scrapes read `read_state()`; it runs on the server thread."""
        self._live.read_state = read_state


def host_port(host: str, port: int) -> str:
    """`host:port` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# At most this many client connections are open at once; a new one beyond it closes the one
# that has waited longest without sending anything (a probe is never locked out by idle ones).
MAX_CONNECTIONS = 64
# Connections are served by this many threads, whatever their number.
SERVING_THREADS = 4
# A connection that sends nothing for this long is closed; once its request has begun, each
# read of it waits at most this long.
READ_TIMEOUT_S = 5.0
# After the process ran out of descriptors, new connections wait this long to be accepted.
ACCEPT_PAUSE_S = 0.1


class _Server(WSGIServer):
    """The WSGI server for one address family; connections are accepted and dispatched by
    MetricsServer, one request each."""

    # The kernel's queue of connections not yet accepted: with socketserver's 5, a burst of
    # clients has its connections dropped and retried a second later, probes included.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _QuietHandler)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


StartResponse = Callable[..., Any]


def _family(host: str, port: int) -> socket.AddressFamily:
    """The address family of `host` (an IPv4 or IPv6 address, or a name)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(e.errno, f"cannot resolve {host!r}: {e.strerror}") from None
    return infos[0][0]


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on threads of its own, with bounded resources: one
    thread waits for connections and requests (idle connections cost a descriptor, not a
    thread), SERVING_THREADS threads answer them, at most MAX_CONNECTIONS are open, and a
    client that sends nothing is dropped after READ_TIMEOUT_S. A scrape or a probe is answered
    whatever a crowd of idle or slow clients does."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._prometheus = make_wsgi_app(metrics.registry)
        self._server = _Server((host, port), _family(host, port))
        self._server.set_app(self._app)
        # Never block the waiting thread in accept(): a client may give up in between.
        self._server.socket.setblocking(False)
        self.port: int = self._server.server_port
        self.host = host
        # Written to by stop(): the waiting thread wakes at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="shovel-metrics", daemon=True)
        # Connections with a request to answer, for the serving threads (None: stop).
        self._ready: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        # Open connections not handed to a serving thread yet: when each was accepted.
        self._idle: dict[socket.socket, float] = {}
        self._open = 0
        self._open_lock = threading.Lock()

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
        for n in range(SERVING_THREADS):
            threading.Thread(target=self._answer, name=f"shovel-http-{n}", daemon=True).start()
        self._thread.start()

    def _serve(self) -> None:
        """Accepts connections and waits for their requests, until stop()."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            paused_until = 0.0
            while True:
                now = time.monotonic()
                if paused_until and now >= paused_until:
                    paused_until = 0.0
                    selector.register(self._server, selectors.EVENT_READ)
                self._drop_expired(selector, now)
                wakes = [paused_until] if paused_until else []
                if self._idle:
                    # The oldest idle connection (they are kept in accept order) expires first.
                    wakes.append(next(iter(self._idle.values())) + READ_TIMEOUT_S)
                timeout = max(min(wakes) - now, 0.0) if wakes else None
                for key, _ in selector.select(timeout):
                    obj = key.fileobj
                    if obj is self._wake_r:
                        for conn in self._idle:
                            self._close(conn)
                        self._idle.clear()
                        return
                    if obj is self._server:
                        if not self._accept(selector):
                            selector.unregister(self._server)
                            paused_until = time.monotonic() + ACCEPT_PAUSE_S
                        continue
                    assert isinstance(obj, socket.socket)
                    # A request begins (or the client hung up): a serving thread takes it.
                    selector.unregister(obj)
                    del self._idle[obj]
                    self._ready.put(obj)

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accepts one connection; False when the process is out of descriptors (and no idle
        connection could be closed to make room)."""
        try:
            conn, _ = self._server.socket.accept()
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # The client gave up before it was accepted (ECONNABORTED and the like).
                return True
            return self._evict_oldest(selector)
        with self._open_lock:
            self._open += 1
            full = self._open > MAX_CONNECTIONS
        if full:
            self._evict_oldest(selector)
        self._idle[conn] = time.monotonic()
        selector.register(conn, selectors.EVENT_READ)
        return True

    def _evict_oldest(self, selector: selectors.BaseSelector) -> bool:
        """Closes the connection that has waited longest without a request; False if none."""
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        selector.unregister(oldest)
        self._close(oldest)
        return True

    def _drop_expired(self, selector: selectors.BaseSelector, now: float) -> None:
        # Accepted in order, so the oldest come first.
        while self._idle:
            conn, accepted = next(iter(self._idle.items()))
            if now - accepted < READ_TIMEOUT_S:
                return
            del self._idle[conn]
            selector.unregister(conn)
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.close()
        with self._open_lock:
            self._open -= 1

    def _answer(self) -> None:
        """A serving thread: answers one request per connection, then closes it."""
        while (conn := self._ready.get()) is not None:
            try:
                conn.settimeout(READ_TIMEOUT_S)
                self._server.finish_request(conn, conn.getpeername())
            except Exception as e:
                # A client that went away or timed out; nothing to answer.
                log.debug("http: %r", e)
            finally:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_WR)
                self._close(conn)

    def stop(self) -> None:
        """Stops serving (at once) and releases the port."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join()
        for _ in range(SERVING_THREADS):
            self._ready.put(None)
        self._server.server_close()
        self._wake_r.close()
        self._wake_w.close()
