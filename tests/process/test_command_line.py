"""The command line from outside: JSON log lines, usage errors and refusals to start in one
style, a config file run, and `make run` stopped by Ctrl-C in a terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ERROR_LINE, WAIT_S, generated, stored_bytes

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
    return subprocess.run(
        [sys.executable, "-m", "shovel", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def test_json_logs_are_one_object_per_line_with_the_text_lines_fields(tmp_path: Path) -> None:
    args = ["--source", "generate:100", "--output-dir", "out", "--metrics-port", "0"]
    (tmp_path / "text").mkdir()
    (tmp_path / "json").mkdir()
    text = _run(args, tmp_path / "text")
    as_json = _run([*args, "--log-format", "json"], tmp_path / "json")
    assert (text.returncode, as_json.returncode) == (0, 0), (text.stderr, as_json.stderr)
    lines = [json.loads(line) for line in as_json.stderr.splitlines()]
    for line in lines:
        assert list(line) == ["time", "level", "logger", "message"], line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", line["time"])
    # The same lines as the text format's, field for field (timings and counts aside).
    plain = [re.fullmatch(r"\S+ \S+ (\S+) (\S+): (.*)", line) for line in text.stderr.splitlines()]
    assert all(plain), text.stderr

    def unnumbered(fields: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(re.sub(r"[\d.]+", "#", f) for f in fields)

    assert [unnumbered((j["level"], j["logger"], j["message"])) for j in lines] == [
        unnumbered(p.groups()) for p in plain if p
    ]
    assert any(line["message"].startswith("summary: read 100 records") for line in lines)
    assert stored_bytes(tmp_path / "json" / "out") == generated(0, 100)


def test_a_usage_error_in_json_is_one_object(tmp_path: Path) -> None:
    r = _run(["--log-format", "json", "--fsync-max-bytes", "lots"], tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    fields = json.loads(line)
    assert fields["level"] == "ERROR"
    assert fields["message"].startswith("--fsync-max-bytes 'lots': not a size")


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("missing.log", "no such file or directory"),
        (".", "is a directory, not a file"),
        ("generate:abc", "generate:N needs a whole number N >= 0"),
        ("nats://127.0.0.1/S", "needs ?consumer=NAME"),
    ],
)
def test_usage_errors_and_refusals_look_the_same(tmp_path: Path, source: str, reason: str) -> None:
    r = _run(["--source", source, "--output-dir", "out", "--metrics-port", "0"], tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    start = ERROR_LINE.match(line)
    assert start, line
    said = line[start.end() :]
    assert said.startswith(f"--source {source!r}: "), said
    assert reason in said
    # What the user typed is named once.
    assert said.count(source) == 1, said
    assert not (tmp_path / "out").exists()


def test_a_config_file_runs_shovel(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(500))
    (tmp_path / "in.log").write_bytes(data)
    (tmp_path / "shovel.toml").write_text(
        'source = "in.log"\noutput_dir = "stored"\nmetrics_port = 0\nlog_format = "json"\n'
    )
    r = _run(["--config", "shovel.toml"], tmp_path)
    assert r.returncode == 0, r.stderr
    messages = [json.loads(line)["message"] for line in r.stderr.splitlines()]
    assert any(m.startswith("shovel started: file in.log -> stored,") for m in messages)
    assert not any(m.startswith("metrics on") for m in messages)
    assert stored_bytes(tmp_path / "stored") == data


def _read_until(fd: int, want: bytes | None, seen: bytearray) -> bool:
    """Reads the terminal into `seen` until `want` shows (None: until it closes, when every
    process on it has left); False after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while want is None or want not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the terminal closed
            chunk = b""
        if not chunk:
            return want is None or want in seen
        seen += chunk
    return True


def _make_run(out: Path) -> tuple[int, int]:
    """`make run` on a terminal of its own, as a person's shell starts it: its pid, and the
    terminal's master end."""
    # -o: the venv this test runs in is the one make run uses; never rebuild it here.
    argv = ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "run"]
    argv.append(f"ARGS=--source generate --output-dir {out} --metrics-port 0")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    return pid, fd


def _ended(pid: int, fd: int, seen: bytearray) -> int:
    """Waits for the terminal to close and `pid` to exit; its exit code. Whatever is left on
    the terminal is killed (shovel runs in a process group of its own)."""
    # The terminal's foreground group now: shovel's, once make run has handed it over.
    group = os.tcgetpgrp(fd)
    try:
        assert _read_until(fd, None, seen), seen
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        # (Never 0 or this test's own group: killpg would kill pytest.)
        if group > 1 and group != os.getpgrp():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(fd)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
def test_make_run_stopped_by_ctrl_c_exits_0(tmp_path: Path) -> None:
    pid, fd = _make_run(tmp_path / "out")
    seen = bytearray()
    if _read_until(fd, b"shovel started", seen):
        # Ctrl-C, typed: the terminal signals its foreground process group.
        os.write(fd, b"\x03")
    code = _ended(pid, fd, seen)
    text = seen.decode(errors="replace")
    assert "shovel started" in text
    assert code == 0, text
    assert "SIGINT received" in text
    assert "Interrupt" not in text  # make's "*** [run] Interrupt"
    stored = stored_bytes(tmp_path / "out")
    assert stored == generated(0, stored.count(b"\n"))


@needs_make
def test_a_sigterm_for_make_run_stops_shovel_cleanly(tmp_path: Path) -> None:
    pid, fd = _make_run(tmp_path / "out")
    seen = bytearray()
    if _read_until(fd, b"shovel started", seen):
        os.kill(pid, signal.SIGTERM)  # make's, not shovel's
    code = _ended(pid, fd, seen)
    text = seen.decode(errors="replace")
    assert "SIGTERM received" in text
    assert "undelivered 0" in text
    # make itself ends as a SIGTERM says, once shovel has stopped.
    assert code == -signal.SIGTERM, text
