"""A shovel run watched through its /metrics: started with a free metrics port, waited on
until it is storing, scraped, and stopped with SIGTERM, timing the kill-to-exit interval."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from common import BenchError
from scrape import Scrape, scrape

from shovel.service.laststop import ReportError, read_report

POLL_S = 0.02  # a scrape costs shovel a little CPU: often enough, not more
START_TIMEOUT_S = 60.0
STORED = "shovel_records_stored_total"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EndedEarly(BenchError):
    """shovel exited 0 (its source ran out) before it was seen storing."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """How a SIGTERM ended the run."""

    kill_to_exit_s: float
    exit_code: int
    # True when the process had exited before the signal was sent (its source ran out).
    ended_before_signal: bool


class Service:
    """One `python -m shovel` process with metrics on a port of its own. Use it as a context
    manager: leaving the block kills the process if it is still running."""

    def __init__(
        self, source: str, out: Path, extra: Sequence[str], source_flags: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self.out = out
        self.log_path = out.with_name(out.name + ".log")
        self.cmd = [
            sys.executable,
            "-m",
            "shovel",
            "--source",
            source,
            *source_flags,
            "--output-dir",
            str(out),
            "--metrics-port",
            str(self.port),
            "--status-interval-s",
            "0",
            "--log-level",
            "WARNING",
            *extra,
        ]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=out.parent
        )  # not in a source checkout, whose package `-m shovel` would import instead

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.reaped:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    @property
    def reaped(self) -> bool:
        """Whether the process was waited for (its exit code is known)."""
        return self.proc.returncode is not None

    def log_text(self) -> str:
        """What shovel logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def scrape(self) -> Scrape:
        """One scrape of its /metrics."""
        return scrape(self.port)

    def wait_storing(self, timeout_s: float = START_TIMEOUT_S) -> Scrape:
        """Polls /metrics until some records are durable; returns that scrape. Raises
        EndedEarly when the process exits 0 first, BenchError when it fails first or nothing
        is stored within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                if self.proc.returncode == 0:
                    raise EndedEarly("shovel ended (exit 0) before it was seen storing")
                raise BenchError(
                    f"shovel exited with {self.proc.returncode} before storing anything:\n"
                    f"{self.log_text()}"
                )
            try:
                s = self.scrape()
                if s.value(STORED) > 0:
                    return s
            except OSError:
                pass  # the server is not up yet
            if time.monotonic() > deadline:
                raise BenchError(
                    f"shovel stored nothing within {timeout_s:.0f} s:\n{self.log_text()}"
                )
            time.sleep(POLL_S)

    def stop(self) -> Stopped:
        """Sends SIGTERM and reaps the process; the interval runs from just before kill() to
        the return of wait4."""
        if self.reaped:
            raise BenchError("shovel has exited already")
        # A process that exits between this check and the kill stays a zombie until reaped,
        # so the signal can never reach another process.
        pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
        ended_before = pid != 0
        sent = time.perf_counter()
        if not ended_before:
            os.kill(self.proc.pid, signal.SIGTERM)
            _, status, _ = os.wait4(self.proc.pid, 0)
        exited = time.perf_counter()
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        return Stopped(exited - sent, code, ended_before)


@dataclass(frozen=True, slots=True)
class Ended:
    """What shovel's stop report (OUTPUT_DIR/last-stop.json) says about a clean end."""

    reason: str
    committed_offset: int
    # shovel's own measure: the signal's arrival (or the source's end) to the end of the run.
    stop_duration_s: float | None


def ended_cleanly(out: Path, stopped: Stopped, log_text: str) -> Ended:
    """The end of a run stopped by SIGTERM (or ended by its source); raises BenchError unless
    it exited 0 with nothing undelivered and a committed offset in its report."""
    if stopped.exit_code != 0:
        raise BenchError(f"shovel exited with {stopped.exit_code} after SIGTERM:\n{log_text}")
    try:
        report = read_report(out)
    except ReportError as e:
        raise BenchError(f"the stop report in {out} is damaged: {e}\n{log_text}") from e
    if report is None:
        raise BenchError(f"no stop report in {out}\n{log_text}")
    reason = report.reason
    committed = report.committed_offset
    duration = report.stop_duration_s
    if reason not in ("signal", "end of source") or report.undelivered not in (0, None):
        raise BenchError(f"unexpected stop report after SIGTERM: {report}\n{log_text}")
    if committed is None:
        raise BenchError(f"the stop report has no committed offset: {report}\n{log_text}")
    return Ended(
        "end of source" if stopped.ended_before_signal else reason,
        committed,
        duration,
    )
