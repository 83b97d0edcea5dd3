"""Every stop is visible to Prometheus: each run leaves OUTPUT/last-stop.json, and the next
start exports it as the shovel_last_stop_* gauges; a run that never wrote one (SIGKILL) shows
as exit code -1. Also the output directory's safe defaults: nothing world-readable, and no
symbolic link planted there is ever written through."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shovel.service.laststop import REPORT_FILE
from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    free_port,
    generated,
    http_get,
    read_checkpoint,
    run_shovel,
    stored_bytes,
    write_input,
)

QUIET = ["--metrics-port", "0", "--status-interval-s", "0"]
LAST_STOP = re.compile(r"^(shovel_last_stop_\w+) (\S+)$", re.MULTILINE)


def report(out: Path) -> dict[str, object]:
    body = json.loads((out / REPORT_FILE).read_text())
    assert isinstance(body, dict)
    return body


def last_stop_gauges(port: int) -> dict[str, float]:
    code, text = http_get(port, "/metrics")
    assert code == 200, text
    return {name: float(value) for name, value in LAST_STOP.findall(text)}


def run_watched(out: Path, log: Path) -> tuple[dict[str, float], str]:
    """Starts an endless generator on `out`, reads the last-stop gauges and the report while it
    runs, then stops it with SIGTERM. Returns the gauges and the log."""
    port = free_port()
    s = Shovel(
        ["--source", "generate", "--output-dir", out, "--metrics-port", str(port),
         "--status-interval-s", "0"],
        log,
    )  # fmt: skip
    try:
        s.wait_for_log("shovel started")
        gauges = last_stop_gauges(port)
        running = report(out)
        assert running["reason"] == "running", running
        assert "exit_code" not in running, running
    finally:
        s.signal(signal.SIGTERM)
        code = s.wait()
    assert code == 0, s.stderr
    return gauges, s.stderr


def test_the_first_run_exports_no_last_stop_and_leaves_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    gauges, text = run_watched(out, tmp_path / "1.log")
    assert gauges == {}, "a fresh directory has no previous stop"
    assert "last stop:" not in text
    r = report(out)
    cp = read_checkpoint(out)
    assert cp is not None
    assert r["reason"] == "signal"
    assert r["signal"] == "SIGTERM"
    assert r["exit_code"] == 0
    assert r["undelivered"] == 0
    assert r["records_stored"] == r["records_read"] == cp.records
    assert r["committed_offset"] == cp.committed_offset
    assert isinstance(r["ended_at"], float)
    assert isinstance(r["started_at"], float)
    assert r["started_at"] <= r["ended_at"]


def test_the_next_start_exports_the_previous_stop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run_shovel(
        ["--source", "generate:500", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 0, text
    first = report(out)
    assert (first["reason"], first["exit_code"], first["undelivered"]) == ("end of source", 0, 0)
    gauges, text = run_watched(out, tmp_path / "2.log")
    assert gauges == {
        "shovel_last_stop_exit_code": 0.0,
        "shovel_last_stop_undelivered_records": 0.0,
        "shovel_last_stop_duration_seconds": first["stop_duration_s"],
        "shovel_last_stop_end_timestamp_seconds": first["ended_at"],
    }
    assert "last stop: the previous run stopped on end of source" in text, text


def test_a_killed_run_shows_as_exit_code_minus_1_at_the_next_start(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = Shovel(["--source", "generate", "--output-dir", out, *QUIET], tmp_path / "1.log")
    s.wait_for_log("shovel started")
    assert (out / REPORT_FILE).exists(), "the running marker is written before the start line"
    s.proc.kill()
    s.wait()
    gauges, text = run_watched(out, tmp_path / "2.log")
    # What is not known of a killed run is not exported, rather than exported as 0.
    assert gauges == {"shovel_last_stop_exit_code": -1.0}
    assert "ended without a report: it was killed (SIGKILL, OOM), crashed or lost power" in text


def test_a_refused_start_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run_shovel(
        ["--source", "generate:10", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 0, text
    src = tmp_path / "in.txt"
    write_input(src, 10)
    code, text = run_shovel(["--source", src, "--output-dir", out, *QUIET], tmp_path / "2.log")
    assert code == 1, text
    r = report(out)
    assert (r["reason"], r["exit_code"]) == ("refused", 1)
    assert isinstance(r["detail"], str)
    assert "the two must not be mixed" in r["detail"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not JSON"),
        ('{"v": 1, "reason": "signal", "started_at": NaN}', "NaN is not a number JSON allows"),
        ('{"v": 1, "reason": "signal", "started_at": 1, "ended_at": 1e300}', "'ended_at'"),
        ('{"v": 1, "reason": "signal", "started_at": 1, "exit_code": 1e400}', "'exit_code'"),
        ('{"v": 1, "reason": "signal", "started_at": 1, "undelivered": -5}', "'undelivered'"),
        ('{"v": 1, "reason": "signal", "started_at": 1, "extra": 0}', "unknown fields"),
        ('["v", 1]', "not a JSON object"),
    ],
)
def test_a_damaged_report_is_ignored_with_a_warning(tmp_path: Path, content: str, why: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / REPORT_FILE).write_text(content)
    code, text = run_shovel(
        ["--source", "generate:10", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 0, text
    assert f"ignoring {out / REPORT_FILE}: " in text, text
    assert why in text, text
    assert_clean_stderr(text)
    assert report(out)["exit_code"] == 0


def test_a_directory_in_the_reports_place_does_not_stop_the_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / REPORT_FILE).mkdir(parents=True)
    code, text = run_shovel(
        ["--source", "generate:10", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 0, text
    assert_clean_stderr(text)
    assert f"cannot write {out / REPORT_FILE}" in text, text
    assert stored_bytes(out) == generated(0, 10)


# --- safe defaults ------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_nothing_in_the_output_directory_is_world_readable(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    src = tmp_path / "in.txt"
    src.write_bytes(b"short\n" + b"x" * 3000 + b"\nlast\n")
    code, text = run_shovel(
        ["--source", src, "--output-dir", out, "--max-record-bytes", "1000", *QUIET],
        tmp_path / "1.log",
    )
    assert code == 0, text
    made = [tmp_path / "a", tmp_path / "a" / "b", out, *out.rglob("*")]
    names = {p.relative_to(tmp_path).as_posix() for p in made}
    assert {"a/b/out/lock", "a/b/out/checkpoint", f"a/b/out/{REPORT_FILE}"} <= names
    assert "a/b/out/rejected/00000000000000000006.rec" in names
    for p in made:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = 0o750 if p.is_dir() else 0o640
        assert mode == want, f"{p} has mode {mode:o}, not {want:o}"


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def test_a_symlink_planted_as_the_lock_is_refused_not_written_through(tmp_path: Path) -> None:
    out = tmp_path / "out"
    precious = tmp_path / "precious"
    precious.write_bytes(b"not yours\n")
    plant(out / "lock", precious)
    code, text = run_shovel(
        ["--source", "generate:10", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 1, text
    assert f"{out / 'lock'} is a symbolic link, which shovel never follows" in text, text
    assert "[ELOOP]" in text
    assert "Traceback" not in text
    assert precious.read_bytes() == b"not yours\n"


@pytest.mark.parametrize(
    "name", ["checkpoint.tmp", f"{REPORT_FILE}.1.tmp", "rejected/00000000000000000006.rec.partial"]
)
def test_a_symlink_planted_as_a_temporary_file_is_removed_not_written_through(
    tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    src = tmp_path / "in.txt"
    data = b"short\n" + b"x" * 3000 + b"\nlast\n"
    src.write_bytes(data)
    args: list[str | os.PathLike[str]] = [
        "--source", src, "--output-dir", out, "--max-record-bytes", "1000", *QUIET
    ]  # fmt: skip
    precious = tmp_path / "precious"
    precious.write_bytes(b"not yours\n")
    plant(out / name, precious)
    code, text = run_shovel(args, tmp_path / "1.log")
    assert code == 0, text
    assert_clean_stderr(text)
    assert precious.read_bytes() == b"not yours\n"
    assert not (out / name).is_symlink()
    assert stored_bytes(out) == b"short\nlast\n"
    assert (out / "rejected" / "00000000000000000006.rec").read_bytes() == b"x" * 3000 + b"\n"


@pytest.mark.parametrize("name", ["segments", "rejected"])
def test_a_symlink_planted_as_a_directory_is_refused_not_written_through(
    tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "00000000000000000099.rec").write_bytes(b"not yours\n")
    plant(out / name, elsewhere)
    code, text = run_shovel(
        ["--source", "generate:10", "--output-dir", out, *QUIET], tmp_path / "1.log"
    )
    assert code == 1, text
    assert f"{out / name} is a symbolic link, which shovel never follows" in text, text
    assert "Traceback" not in text
    assert sorted(p.name for p in elsewhere.iterdir()) == ["00000000000000000099.rec"]
