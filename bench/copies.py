"""One file copied to disk by dd, by shovel, or by the classic design (classic.py), timed from
start to exit, with the CPU time and peak RSS that wait4 reports (through launch.py); every
shovel and classic copy is checked byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import BenchError, fresh, remove
from inputs import InputFile, verify_files, verify_whole_copy


@dataclass(frozen=True, slots=True)
class Usage:
    """What one process cost: wall time from spawn to exit, CPU times and peak RSS."""

    wall_s: float
    user_s: float
    sys_s: float
    rss_mib: float

    @property
    def cpu_s(self) -> float:
        """User plus system CPU time."""
        return self.user_s + self.sys_s


LAUNCHER = Path(__file__).resolve().parent / "launch.py"
CLASSIC = Path(__file__).resolve().parent / "classic.py"
# Where the classic design's client (shovel/demo/pyclient.py) keeps its copy and its offset.
CLASSIC_RECORDS = Path("python-store") / "records.ndjson"
CLASSIC_OFFSET = Path("python-store") / "offset"


@dataclass(frozen=True, slots=True)
class ClassicCopy:
    """A copy by the classic design: its usage, and how long an fdatasync of its file took
    right after it exited (it makes nothing durable itself: see classic.py)."""

    usage: Usage
    fdatasync_s: float


def spawn_and_reap(cmd: Sequence[str], log_path: Path) -> tuple[Usage, int]:
    """Runs `cmd` through the launcher (see launch.py: so that its peak RSS is its own), with
    its output to `log_path`; returns its usage and exit code."""
    report_path = log_path.with_name(log_path.name + ".usage")
    launch = [sys.executable, "-I", "-S", str(LAUNCHER), str(report_path), *cmd]
    with log_path.open("wb") as log:
        # In the log's directory: run from a source checkout, `-m shovel` would otherwise
        # import the checkout's package instead of the installed one. A session of its own,
        # so that an interrupted benchmark can kill the command along with the launcher.
        proc = subprocess.Popen(
            launch,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=log_path.parent,
            start_new_session=True,
        )
        try:
            launcher_code = proc.wait()
        except BaseException:  # interrupted: do not leave a writer in a directory being removed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    try:
        report = json.loads(report_path.read_text())
        report_path.unlink()
    except (OSError, ValueError) as e:
        raise BenchError(f"the launcher ({launcher_code}) left no usage report: {e}") from e
    usage = Usage(report["wall_s"], report["user_s"], report["sys_s"], report["maxrss_kib"] / 1024)
    return usage, int(report["exit_code"])


def dd_command(source: Path, out: Path) -> list[str]:
    """The baseline: a 1 MiB-block copy made durable with fdatasync before dd exits."""
    return ["dd", f"if={source}", f"of={out}", "bs=1M", "conv=fdatasync"]


def shovel_copy_command(source: Path, out: Path, extra: Sequence[str]) -> list[str]:
    """shovel copying `source` into `out`, without metrics or status lines."""
    return [sys.executable, "-m", "shovel", *_copy_flags(source, out, extra)]


def classic_copy_command(source: Path, out: Path, extra: Sequence[str]) -> list[str]:
    """The classic design copying `source` into `out`, with the same flags as shovel."""
    return [sys.executable, str(CLASSIC), *_copy_flags(source, out, extra)]


def _copy_flags(source: Path, out: Path, extra: Sequence[str]) -> list[str]:
    return [
        "--source",
        str(source),
        "--output-dir",
        str(out),
        "--metrics-port",
        "0",
        "--status-interval-s",
        "0",
        "--log-level",
        "WARNING",
        *extra,
    ]


def _run_logged(cmd: Sequence[str], out: Path, tool: str) -> Usage:
    fresh(out)
    log_path = out.with_name(out.name + ".log")
    usage, code = spawn_and_reap(cmd, log_path)
    log_text = log_path.read_text(errors="replace")
    log_path.unlink()
    if code != 0:
        remove(out)
        raise BenchError(f"{tool} exited with {code}:\n{log_text}")
    return usage


def run_dd(inp: InputFile, out: Path) -> Usage:
    """Copies the input with dd into a fresh `out`, then removes the copy."""
    usage = _run_logged(dd_command(inp.path, out), out, "dd")
    remove(out)
    return usage


def run_shovel(inp: InputFile, out: Path, extra: Sequence[str]) -> Usage:
    """Copies the input with shovel into a fresh `out`, checks the segments equal the input
    byte for byte, then removes them."""
    usage = _run_logged(shovel_copy_command(inp.path, out, extra), out, "shovel")
    try:
        verify_whole_copy(inp, out)
    finally:
        remove(out)
    return usage


def run_classic(inp: InputFile, out: Path, extra: Sequence[str]) -> ClassicCopy:
    """Copies the input with the classic design into a fresh `out`, times an fdatasync of its
    file at once, checks the file equals the input byte for byte and the saved offset is the
    input's size, then removes the copy."""
    usage = _run_logged(classic_copy_command(inp.path, out, extra), out, "the classic design")
    try:
        records = out / CLASSIC_RECORDS
        fd = os.open(records, os.O_RDONLY | os.O_CLOEXEC)
        try:
            started = time.perf_counter()
            os.fdatasync(fd)
            fdatasync_s = time.perf_counter() - started
        finally:
            os.close(fd)
        verify_files(inp, [records], "the classic design")
        offset = (out / CLASSIC_OFFSET).read_text().strip()
        if offset != str(inp.size):
            raise BenchError(f"the classic design saved offset {offset}, not {inp.size}")
    except OSError as e:
        raise BenchError(f"the classic design left no readable copy: {e}") from e
    finally:
        remove(out)
    return ClassicCopy(usage, fdatasync_s)


def run_pair(
    inp: InputFile, workdir: Path, extra: Sequence[str], dd_first: bool
) -> tuple[Usage, Usage]:
    """One dd copy and one shovel copy, in the order given; returns (dd, shovel)."""
    if dd_first:
        dd = run_dd(inp, workdir / "dd-out")
        return dd, run_shovel(inp, workdir / "shovel-out", extra)
    shovel = run_shovel(inp, workdir / "shovel-out", extra)
    return run_dd(inp, workdir / "dd-out"), shovel


def output_names() -> tuple[str, ...]:
    """What the copies may leave in the work directory when interrupted."""
    names = ("dd-out", "shovel-out", "classic-out")
    return (*names, *(n + ".log" for n in names), *(n + ".log.usage" for n in names))
