"""Stop signals from the first moment: caught before any import that takes time, SIGHUP as a
stop, a stop mask or an ignored SIGHUP inherited from the parent, and a signal at any moment
of a loaded start-up."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    committed,
    generated,
    handles_sigterm,
    stored_bytes,
    wait_until,
)

QUIET: list[str | Path] = ["--metrics-port", "0", "--status-interval-s", "0"]

# Run in a child: records every module imported while SIGTERM, SIGINT or SIGHUP still has its
# default action, then stops the child as soon as all three are caught.
_SPY = textwrap.dedent(
    """
    import _signal, os, runpy, sys

    WATCHED = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)
    before = []

    def caught():
        return all(_signal.getsignal(s) not in (_signal.SIG_DFL, _signal.default_int_handler)
                   for s in WATCHED)

    class Spy:
        def find_spec(self, name, path=None, target=None):
            if caught():
                print(" ".join(before), flush=True)
                os._exit(0)
            before.append(name)
            return None

    sys.meta_path.insert(0, Spy())
    sys.argv = ["shovel", "--help"]
    runpy.run_module("shovel", run_name="__main__", alter_sys=True)
    """
)


def test_the_stop_signals_are_caught_before_any_import_but_the_way_to_them() -> None:
    """What `python -m shovel` imports before its handlers exist is only the path to them: a
    SIGTERM during the service's imports (0.1-0.3 s) is a clean stop, not a kill."""
    out = subprocess.run(
        [sys.executable, "-c", _SPY], capture_output=True, text=True, timeout=60, check=True
    )
    assert list(dict.fromkeys(out.stdout.split())) == [
        "shovel",
        "shovel.__main__",
        "shovel.cli",
        "shovel._early",
    ], out


@pytest.fixture(autouse=True)
def hangup_not_ignored() -> Iterator[None]:
    """Children start with SIGHUP at its default action, whatever the test run inherited: a
    run under nohup (as CI may be) ignores it, and shovel rightly keeps an ignored SIGHUP
    ignored. The tests that want it ignored say so through their launcher."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def cpu_burners() -> Iterator[None]:
    """Two processes that keep both cores busy while the test runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def _report(out: Path) -> dict[str, object] | None:
    try:
        report: dict[str, object] = json.loads((out / "last-stop.json").read_text())
    except FileNotFoundError:
        return None
    return report


@pytest.mark.usefixtures("cpu_burners")
def test_a_stop_signal_at_any_moment_of_a_loaded_start_is_a_clean_stop(tmp_path: Path) -> None:
    """From the moment the handler is there (the interpreter's own start-up is not shovel's),
    a stop signal at a random moment of the first second, with both cores busy, always ends
    in a clean exit 0: never killed, never a traceback, never a run left marked running."""
    rng = random.Random(20261202)
    for attempt in range(12):
        out = tmp_path / f"out{attempt}"
        sig = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)[attempt % 3]
        s = Shovel(
            ["--source", "generate", "--output-dir", out, *QUIET], tmp_path / f"{attempt}.log"
        )
        pid = s.proc.pid
        wait_until(lambda: handles_sigterm(pid, sig), what=f"{sig.name} caught")  # noqa: B023
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.proc.wait(rng.uniform(0, 1.0))
        s.signal(sig)
        code = s.wait()
        assert code == 0, f"attempt {attempt} ({sig.name}): exit {code}\n{s.stderr}"
        assert_clean_stderr(s.stderr)
        assert f"{sig.name} received" in s.stderr, s.stderr
        report = _report(out)
        if report is not None:
            assert report["reason"] == "signal", report
            assert report["signal"] == sig.name, report
        if (out / "segments").exists():
            assert stored_bytes(out) == generated(0, committed(out))


def test_sighup_stops_like_sigterm_and_the_restart_resumes(tmp_path: Path) -> None:
    """A closed terminal sends SIGHUP: shovel drains and reports the stop, as for SIGTERM."""
    out = tmp_path / "out"
    n = 50_000
    args = ["--source", f"generate:{n}", "--output-dir", out, *QUIET]
    s = Shovel([*args, "--generate-rate", "5000", "--fsync-interval-ms", "20"], tmp_path / "1.log")
    wait_until(lambda: committed(out) >= 2000, what="2000 records committed")
    s.signal(signal.SIGHUP)
    assert s.wait() == 0, s.stderr
    assert "SIGHUP received: stopping" in s.stderr
    report = _report(out)
    assert report is not None
    assert (report["reason"], report["signal"], report["exit_code"]) == ("signal", "SIGHUP", 0)
    first = committed(out)
    assert first == report["committed_offset"]
    assert stored_bytes(out) == generated(0, first)
    s = Shovel(args, tmp_path / "2.log")
    assert s.wait() == 0, s.stderr
    assert stored_bytes(out) == generated(0, n)


def _launcher(setup: str) -> list[str]:
    """A command that runs `setup` (Python), then execs its arguments: what it sets is what
    shovel inherits."""
    return [
        sys.executable,
        "-c",
        f"import os, signal, sys; {setup}; os.execv(sys.argv[1], sys.argv[1:])",
    ]


def test_started_under_nohup_a_hangup_is_ignored_and_sigterm_still_stops(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = Shovel(
        ["--source", "generate", "--output-dir", out, *QUIET],
        tmp_path / "log",
        launcher=_launcher("signal.signal(signal.SIGHUP, signal.SIG_IGN)"),
    )
    wait_until(lambda: committed(out) > 0, what="first commit")
    s.signal(signal.SIGHUP)
    # The hangup must change nothing: the run goes on committing.
    after_hangup = committed(out)
    wait_until(lambda: committed(out) > after_hangup, what="commits after the hangup")
    assert s.proc.poll() is None
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert "SIGHUP" not in s.stderr
    assert "SIGTERM received: stopping" in s.stderr


def test_stop_signals_blocked_by_the_parent_still_stop_shovel(tmp_path: Path) -> None:
    """A process may inherit its stop signals blocked; shovel unblocks them, or it could never
    be stopped but by SIGKILL."""
    out = tmp_path / "out"
    s = Shovel(
        ["--source", "generate", "--output-dir", out, *QUIET],
        tmp_path / "log",
        launcher=_launcher(
            "signal.pthread_sigmask(signal.SIG_BLOCK, "
            "(signal.SIGTERM, signal.SIGINT, signal.SIGHUP))"
        ),
    )
    wait_until(lambda: committed(out) > 0, what="first commit")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert "SIGTERM received: stopping" in s.stderr
    assert stored_bytes(out) == generated(0, committed(out))
