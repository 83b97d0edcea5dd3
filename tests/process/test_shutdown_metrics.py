"""Metrics and health endpoints of a running `python -m shovel`, and the directory lock."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    ERROR_LINE,
    Shovel,
    assert_clean_stderr,
    committed,
    free_port,
    generated,
    http_get,
    metric,
    run_shovel,
    stored_bytes,
    wait_until,
)

NAMES = [
    "shovel_records_read_total",
    "shovel_bytes_read_total",
    "shovel_records_stored_total",
    "shovel_bytes_stored_total",
    "shovel_queue_records",
    "shovel_storage_inflight_writes",
    "shovel_storage_inflight_bytes",
    "shovel_committed_offset",
    "shovel_storage_write_duration_seconds_count",
    "shovel_shutdown_in_progress",
    "shovel_shutdown_duration_seconds",
    "shovel_undelivered_records",
]


def test_scrape_during_a_run_is_consistent_and_health_answers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = free_port()
    s = Shovel(
        ["--source", "generate", "--generate-rate", "20000", "--output-dir", out,
         "--metrics-port", str(port)],
        tmp_path / "log",
    )  # fmt: skip
    s.wait_for_log("shovel started")

    def scrape() -> str:
        code, body = http_get(port, "/metrics")
        assert code == 200
        return body

    wait_until(lambda: metric(scrape(), "shovel_records_stored_total") >= 2000, what="stored")
    text = scrape()
    for name in NAMES:
        metric(text, name)
    read = metric(text, "shovel_records_read_total")
    stored = metric(text, "shovel_records_stored_total")
    assert 0 < stored <= read
    # Generator offsets are sequence numbers: committed offset == records stored (fresh dir).
    assert metric(text, "shovel_committed_offset") <= stored
    assert metric(text, "shovel_shutdown_in_progress") == 0
    assert http_get(port, "/healthz") == (200, "ok\n")
    assert http_get(port, "/readyz")[0] == 200
    assert http_get(port, "/nope")[0] == 404
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert stored_bytes(out) == generated(0, committed(out))


def test_metrics_match_the_bytes_on_disk_once_everything_is_stored(tmp_path: Path) -> None:
    """Stdin kept open: shovel stores all it was given and waits; metrics must equal disk."""
    out = tmp_path / "out"
    port = free_port()
    data = b"".join(b"metric line %d\n" % i for i in range(30_000))
    s = Shovel(
        ["--source", "-", "--output-dir", out, "--metrics-port", str(port)],
        tmp_path / "log",
        stdin=subprocess.PIPE,
    )
    assert s.proc.stdin is not None
    s.proc.stdin.write(data)
    s.proc.stdin.flush()

    def stored() -> float:
        code, body = http_get(port, "/metrics")
        return metric(body, "shovel_bytes_stored_total") if code == 200 else -1.0

    wait_until(lambda: stored() == len(data), what="all bytes stored")
    _, body = http_get(port, "/metrics")
    assert metric(body, "shovel_bytes_stored_total") == len(stored_bytes(out)) == len(data)
    assert metric(body, "shovel_records_stored_total") == 30_000
    assert metric(body, "shovel_storage_inflight_writes") == 0
    assert metric(body, "shovel_committed_offset") == len(data)
    s.proc.stdin.close()
    assert s.wait() == 0, s.stderr
    assert stored_bytes(out) == data


def test_second_process_on_the_same_directory_is_refused_and_harms_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    first = Shovel(
        ["--source", "generate", "--generate-rate", "5000", "--output-dir", out,
         "--metrics-port", "0"],
        tmp_path / "first.log",
    )  # fmt: skip
    first.wait_for_log("shovel started")
    code, text = run_shovel(
        ["--source", "generate", "--output-dir", out, "--metrics-port", "0"], tmp_path / "2.log"
    )
    assert code == 1, text
    assert f"--output-dir {str(out)!r}: cannot open it: in use by another shovel process" in text
    assert f"pid {first.proc.pid}" in text
    assert "Traceback" not in text
    assert first.proc.poll() is None, "the first process must keep running"
    wait_until(lambda: committed(out) > 1000, what="first keeps committing")
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr
    assert_clean_stderr(first.stderr)
    assert stored_bytes(out) == generated(0, committed(out))


def test_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    for args, expected in [
        (["--fsync-interval-ms", "-1"], "--fsync-interval-ms"),
        (["--no-such-flag"], "--no-such-flag: no such option"),
        (["--source", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--shutdown-timeout-s", "30", "--grace-period-s", "30"], "grace period"),
    ]:
        code, text = run_shovel(
            [*args, "--output-dir", tmp_path / "o", "--metrics-port", "0"], tmp_path / "log"
        )
        assert code == 2, (args, text)
        assert expected in text, (args, text)
        assert "Traceback" not in text
        assert len(text.strip().splitlines()) == 1, text
        assert ERROR_LINE.match(text), text
