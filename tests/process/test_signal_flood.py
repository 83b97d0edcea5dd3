"""A stop signal is never lost when worker-thread completions flood the event loop.

asyncio's add_signal_handler carries signals through the loop's self-pipe, the same socket
every call_soon_threadsafe writes to; under a flood it is full and a signal's byte is dropped
(tests/helpers/wakeup_flood.py says how). The control shows the flood reaches that condition;
then the real `python -m shovel`, under the same flood, must still stop on one SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    committed,
    generated,
    stored_bytes,
    wait_until,
)
from tests.helpers.wakeup_flood import FLOOD_REPORT_ENV, read_full_count

REPO = Path(__file__).resolve().parents[2]
DROPPED = "Exception ignored when trying to write to the signal wakeup fd"
# Probes that found the self-pipe full before the signal is sent: the flood is at work.
FULL_BEFORE_SIGNAL = 200
# Bounds the stop under the flood (which slows everything down); a lost stop never ends.
STOP_WAIT_S = 30.0


@pytest.fixture
def flooded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Makes every Python subprocess started from now on flood its event loops; returns the
    file where the flood counts the times it found the self-pipe full."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import wakeup_flood\nwakeup_flood.install()\n")
    report = tmp_path / "flood-report"
    # The flood module by its own name, so that importing it imports nothing of tests/ or
    # shovel/ before shovel's own first line runs.
    helpers = REPO / "tests" / "helpers"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(helpers), str(REPO)]))
    monkeypatch.setenv(FLOOD_REPORT_ENV, str(report))
    return report


def test_the_flood_drops_signals_sent_through_the_loops_self_pipe(
    tmp_path: Path, flooded: Path
) -> None:
    """The control: a plain loop.add_signal_handler program loses signal bytes to this flood."""
    err = tmp_path / "control.err"
    with err.open("wb") as err_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import asyncio, wakeup_flood as f; asyncio.run(f.control())",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err_file,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            wait_until(
                lambda: read_full_count(flooded) >= FULL_BEFORE_SIGNAL, what="the flood at work"
            )

            def dropped_after_another_sigterm() -> bool:
                if DROPPED in err.read_text():
                    return True
                proc.send_signal(signal.SIGTERM)
                return False

            wait_until(dropped_after_another_sigterm, what="a SIGTERM byte dropped")
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_sigterm_stops_shovel_under_a_flood_of_thread_completions(
    tmp_path: Path, flooded: Path
) -> None:
    out = tmp_path / "out"
    flags = ["--generate-rate", "5000", "--metrics-port", "0", "--fsync-interval-ms", "20"]
    s = Shovel(
        ["--source", "generate", "--output-dir", out, *flags],
        tmp_path / "log",
    )
    wait_until(lambda: committed(out) > 0, what="a first commit")
    wait_until(lambda: read_full_count(flooded) >= FULL_BEFORE_SIGNAL, what="the flood at work")
    s.signal(signal.SIGTERM)
    assert s.wait(STOP_WAIT_S) == 0, s.stderr
    assert_clean_stderr(s.stderr)
    assert "SIGTERM received" in s.stderr
    assert "undelivered 0" in s.stderr
    # shovel's signals never share a pipe with the loop's notifications.
    assert DROPPED not in s.stderr
    assert stored_bytes(out) == generated(0, committed(out))
