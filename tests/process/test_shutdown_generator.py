"""The generator source under stop and restart, and stops that come early."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    committed,
    generated,
    handles_sigterm,
    read_checkpoint,
    run_shovel,
    stored_bytes,
    wait_until,
)

FAST = ["--generate-rate", "0", "--metrics-port", "0"]


def test_generate_n_stores_exactly_records_0_to_n_minus_1(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run_shovel(
        ["--source", "generate:25000", "--output-dir", out, *FAST], tmp_path / "log"
    )
    assert code == 0, text
    assert_clean_stderr(text)
    assert stored_bytes(out) == generated(0, 25_000)
    cp = read_checkpoint(out)
    assert cp is not None
    assert (cp.committed_offset, cp.records) == (25_000, 25_000)


def test_generate_zero_records_is_a_clean_empty_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run_shovel(
        ["--source", "generate:0", "--output-dir", out, *FAST], tmp_path / "log"
    )
    assert code == 0, text
    assert stored_bytes(out) == b""
    assert committed(out) == 0


def test_sigterm_mid_generation_then_restart_completes_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    n = 60_000
    paced = ["--generate-rate", "6000", "--metrics-port", "0", "--fsync-interval-ms", "20"]
    s = Shovel(["--source", f"generate:{n}", "--output-dir", out, *paced], tmp_path / "1.log")
    wait_until(lambda: committed(out) >= 3000, what="3000 records committed")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    first = committed(out)
    assert 3000 <= first < n
    assert stored_bytes(out) == generated(0, first)
    code, text = run_shovel(
        ["--source", f"generate:{n}", "--output-dir", out, *FAST], tmp_path / "2.log"
    )
    assert code == 0, text
    assert f"resuming at offset {first}" in text
    assert stored_bytes(out) == generated(0, n)


def test_sigterm_during_startup_exits_cleanly(tmp_path: Path) -> None:
    """Delivered as soon as the handler exists, i.e. while imports and setup still run."""
    out = tmp_path / "out"
    s = Shovel(
        ["--source", "generate", "--output-dir", out, "--metrics-port", "0"], tmp_path / "log"
    )
    wait_until(lambda: handles_sigterm(s.proc.pid), what="SIGTERM handler installed")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert_clean_stderr(s.stderr)
    assert "SIGTERM received" in s.stderr
    if (out / "segments").exists():
        assert stored_bytes(out) == generated(0, committed(out))


def test_three_quick_signals_still_commit_only_durable_records(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = Shovel(["--source", "generate", "--output-dir", out, *FAST], tmp_path / "log")
    wait_until(lambda: committed(out) > 0, what="first commit")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        s.signal(sig)
    code = s.wait()
    assert code in (0, 3), s.stderr
    assert (code == 3) == ("undelivered 0" not in s.stderr), s.stderr
    assert_clean_stderr(s.stderr)
    assert stored_bytes(out) == generated(0, committed(out))


def test_sigterm_mid_line_on_stdin_keeps_the_partial_line(tmp_path: Path) -> None:
    """Bytes taken from a pipe cannot be read again: a stop must not drop a partial line."""
    out = tmp_path / "out"
    s = Shovel(
        ["--source", "-", "--output-dir", out, "--metrics-port", "0"],
        tmp_path / "log",
        stdin=subprocess.PIPE,
    )
    assert s.proc.stdin is not None
    s.proc.stdin.write(b"complete 1\ncomplete 2\nPARTIAL-WITHOUT-NEWLINE-YET")
    s.proc.stdin.flush()
    wait_until(lambda: committed(out) == 22, what="the complete lines committed")
    s.signal(signal.SIGTERM)
    code = s.wait()
    s.proc.stdin.close()
    assert code == 0, s.stderr
    assert stored_bytes(out) == b"complete 1\ncomplete 2\nPARTIAL-WITHOUT-NEWLINE-YET\n"
    assert "stopped mid-line" in s.stderr
    assert "undelivered 0" in s.stderr


def test_stdin_source_stores_everything_piped_in(tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = b"".join(b"from stdin %d\r\n" % i for i in range(50_000)) + b"\xff\xfe no newline"
    s = Shovel(
        ["--source", "-", "--output-dir", out, "--metrics-port", "0"],
        tmp_path / "log",
        stdin=subprocess.PIPE,
    )
    assert s.proc.stdin is not None
    s.proc.stdin.write(data)
    s.proc.stdin.close()
    assert s.wait() == 0, s.stderr
    assert stored_bytes(out) == data + b"\n"
    assert committed(out) == len(data)
