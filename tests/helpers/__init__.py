"""Helpers shared by the tests: run the real `python -m shovel`, read what it stored."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from shovel import _native
from shovel.sources import generated_record

# The start of an ERROR line of shovel's, as a usage error or a refusal to start is logged.
ERROR_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR shovel: ")

# Bounds every wait in the tests; generous because CI machines are shared.
WAIT_S = 60.0


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "") -> None:
    """Polls `predicate` until true; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.01)


# Checkpoints are read with the native module's reader: the store's own parser, no copy of it.
Checkpoint = _native.Checkpoint
read_checkpoint = _native.read_checkpoint


def committed(out: Path) -> int:
    """The committed offset of `out` (0 when there is no checkpoint yet)."""
    cp = read_checkpoint(out)
    return cp.committed_offset if cp else 0


def stored_bytes(out: Path) -> bytes:
    """The concatenation of the segments of `out`, in name order."""
    return b"".join(p.read_bytes() for p in sorted((out / "segments").glob("*.seg")))


def generated(start: int, stop: int) -> bytes:
    """The generator's records start..stop-1."""
    return b"".join(generated_record(i) for i in range(start, stop))


def write_input(path: Path, records: int, seed: int = 0) -> bytes:
    """Writes `records` newline-terminated records of varied length; returns the bytes."""
    parts = []
    for i in range(records):
        width = (i * 7919 + seed) % 180
        parts.append(b"line %09d %s\n" % (i, b"abcdefghij"[i % 10 :] * (width // 10 + 1)))
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in a Prometheus text exposition."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics:\n{text}"
    return float(m.group(1))


def handles_sigterm(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Whether process `pid` has a handler installed for `sig` (from /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    m = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    if m is None:
        return False
    return bool(int(m.group(1), 16) & (1 << (sig - 1)))


class Shovel:
    """A `python -m shovel` subprocess whose stderr goes to a file."""

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        log: Path,
        stdin: int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
        python: str = sys.executable,
        *,
        launcher: Sequence[str] = (),
    ) -> None:
        self.log = log
        self._log_file = log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
        self.proc = subprocess.Popen(
            # `launcher` (a command that execs its arguments) sets up what shovel inherits.
            [*launcher, python, "-m", "shovel", *map(str, args)],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=cwd,
            env=env,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kills the process if it still runs: a test that fails leaves no shovel behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()

    @property
    def stderr(self) -> str:
        """What the process logged so far."""
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Sends `sig`."""
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = WAIT_S) -> int:
        """Waits for exit; returns the exit code."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"shovel did not exit in {timeout_s}s:\n{self.stderr}") from None
        finally:
            self._log_file.close()

    def wait_for_log(self, text: str, timeout_s: float = WAIT_S) -> None:
        """Waits until the log contains `text`."""
        wait_until(
            lambda: text in self.stderr or self.proc.poll() is not None, timeout_s, repr(text)
        )
        assert text in self.stderr, f"exited before logging {text!r}:\n{self.stderr}"


def run_shovel(args: Sequence[str | os.PathLike[str]], log: Path, **kw: object) -> tuple[int, str]:
    """Runs shovel to completion; returns exit code and log."""
    s = Shovel(args, log, **kw)  # type: ignore[arg-type]
    code = s.wait()
    return code, s.stderr


def assert_clean_stderr(text: str) -> None:
    """No sign of a crash or of asyncio teardown trouble in a log."""
    for bad in (
        "Traceback",
        "Fatal Python error",
        "Task was destroyed but it is pending",
        "Event loop is closed",
        "never retrieved",
    ):
        assert bad not in text, f"{bad!r} in stderr:\n{text}"
