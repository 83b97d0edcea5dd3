"""The metrics HTTP server in-process: endpoints, readiness, live values at scrape time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from shovel.service.metrics import LiveState, Metrics
from shovel.sources import SourceOptions, parse_source
from shovel.sources.file import FileProgress
from shovel.sources.filemetrics import FileProgressCollector
from tests.helpers import http_get, metric


def state(**values: int) -> LiveState:
    fields: dict[str, Any] = dict.fromkeys(LiveState.__dataclass_fields__, 0)
    fields.update(values)
    return LiveState(**fields)


def test_readiness_follows_the_flag_and_health_is_always_ok(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    assert http_get(port, "/readyz")[0] == 503
    metrics.ready = True
    assert http_get(port, "/readyz") == (200, "ready\n")
    metrics.ready = False
    assert http_get(port, "/readyz")[0] == 503
    assert http_get(port, "/healthz") == (200, "ok\n")


def test_live_values_are_read_at_scrape_time(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    current = {"value": state(queue_records=5, inflight_writes=2, records_stored=10)}
    metrics.read_live_state_from(lambda: current["value"])
    text = http_get(port, "/metrics")[1]
    assert metric(text, "shovel_queue_records") == 5
    assert metric(text, "shovel_storage_inflight_writes") == 2
    assert metric(text, "shovel_records_stored_total") == 10
    current["value"] = state(queue_records=0, committed_offset=1234)
    text = http_get(port, "/metrics")[1]
    assert metric(text, "shovel_queue_records") == 0
    assert metric(text, "shovel_committed_offset") == 1234


def test_metrics_exist_before_anything_runs(served: tuple[Metrics, int]) -> None:
    _, port = served
    text = http_get(port, "/metrics")[1]
    for name in (
        "shovel_records_read_total",
        "shovel_undelivered_records",
        "shovel_shutdown_in_progress",
        "shovel_storage_write_duration_seconds_bucket",
    ):
        assert name in text


def test_a_source_shows_its_own_families_once_it_has_them(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    progress: dict[str, FileProgress | None] = {"now": None}
    metrics.show([FileProgressCollector(lambda: progress["now"])])
    assert "shovel_source_" not in http_get(port, "/metrics")[1]
    progress["now"] = FileProgress("/logs/caf\udce9.log", size=100, position=60, rotations=2)
    text = http_get(port, "/metrics")[1]
    assert 'shovel_source_file_info{path="/logs/caf\\\\xe9.log"} 1.0' in text
    assert metric(text, "shovel_source_lag_bytes") == 40
    assert metric(text, "shovel_source_rotations_total") == 2
    # The service's own families are still there.
    assert metric(text, "shovel_records_read_total") == 0


def test_the_nats_families_are_shown_only_for_a_nats_source(tmp_path: Path) -> None:
    (tmp_path / "in.log").write_bytes(b"")
    options = SourceOptions(4096, 1 << 20, output_dir=tmp_path)
    sources = {
        "file": str(tmp_path / "in.log"),
        "generator": "generate:5",
        "nats": "nats://127.0.0.1/S?consumer=c",
    }
    shown = {}
    for kind, text in sources.items():
        metrics = Metrics()
        metrics.show(parse_source(text).open(options).collectors())
        shown[kind] = generate_latest(metrics.registry).decode()
    assert "shovel_nats_" in shown["nats"]
    assert "shovel_nats_" not in shown["file"]
    assert "shovel_nats_" not in shown["generator"]
