"""Storage faults under the real `python -m shovel`: a full disk, a read-only or vanished output
directory, a hung fsync, failing writes and fsyncs (SHOVEL_FAULTS), and damaged stores.

Every failure must end with the documented exit code and one clear fatal line, leave a
checkpoint that describes only bytes really on disk, and let a plain restart finish the job
byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from shovel._native import FAULT_INJECTION
from shovel.service.laststop import REPORT_FILE
from tests.helpers import (
    Checkpoint,
    Shovel,
    assert_clean_stderr,
    committed,
    free_port,
    generated,
    http_get,
    metric,
    read_checkpoint,
    stored_bytes,
    wait_until,
    write_input,
)
from tests.helpers.faults import FaultyShovel, Summary, summary

# No metrics server and no status lines unless a test scrapes or reads them.
QUIET = ["--metrics-port", "0", "--status-interval-s", "0"]
# Small fsync groups and little in flight: many checkpoints, so a fault lands mid-run.
PACED = [
    "--generate-rate", "20000",
    "--fsync-max-bytes", "65536",
    "--max-inflight-bytes", "262144",
]  # fmt: skip
FAST = ["--generate-rate", "0"]

SEGMENT_0 = "00000000000000000000.seg"
SEGMENT_1 = "00000000000000000001.seg"
# writer.rs: a failed append or checkpoint is retried this many times, fsync never.
RETRIES = 6

# --- running shovel with SHOVEL_FAULTS --------------------------------------------------------


class Shovels:
    """Starts shovel processes for one test and kills any left running when it ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Shovel] = []

    def start(
        self, args: Sequence[str | os.PathLike[str]], log: str, faults: str | None = None
    ) -> Shovel:
        path = self.tmp_path / log
        s = Shovel(args, path) if faults is None else FaultyShovel(args, path, faults)
        self.started.append(s)
        return s

    def run(
        self, args: Sequence[str | os.PathLike[str]], log: str, faults: str | None = None
    ) -> tuple[int, str]:
        s = self.start(args, log, faults)
        code = s.wait()
        return code, s.stderr

    def reap(self) -> None:
        for s in self.started:
            if s.proc.poll() is None:
                s.proc.kill()
            s.wait()  # also closes its log file


@pytest.fixture
def faults_enabled() -> None:
    if not FAULT_INJECTION:
        pytest.skip(
            "shovel._native was built without the fault-injection feature: SHOVEL_FAULTS is "
            "ignored (build the dev module with fault injection to run this test)"
        )


# --- tmpfs mounts -----------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


class Tmpfs:
    """A tmpfs mounted at `path` for one test; every layer is unmounted at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, size: str) -> None:
        if shutil.which("mount") is None:
            pytest.skip("the mount command (util-linux) is not installed")
        self.path.mkdir(exist_ok=True)
        r = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path))
        if r.returncode != 0:
            why = r.stderr.strip()
            denied = ("permission denied", "operation not permitted", "must be superuser")
            if os.geteuid() != 0 or any(d in why.lower() for d in denied):
                pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {why}")
            raise AssertionError(f"mount tmpfs on {self.path} failed: {why}")

    def run(self, *args: str) -> None:
        r = _mount(*args, str(self.path))
        assert r.returncode == 0, f"mount {' '.join(args)} {self.path}: {r.stderr.strip()}"

    def unmount_all(self) -> None:
        for _ in range(10):
            if not os.path.ismount(self.path):
                return
            r = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            if r.returncode != 0:  # still busy (a test failed with shovel running): detach
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
        assert not os.path.ismount(self.path), f"{self.path} is still mounted"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    t = Tmpfs(tmp_path / "mnt")
    try:
        yield t
    finally:
        t.unmount_all()


@pytest.fixture
def shovels(tmp_path: Path) -> Iterator[Shovels]:
    # Requested after `tmpfs` by the tests that use both, so it is torn down first: no shovel
    # process keeps a mount busy.
    s = Shovels(tmp_path)
    try:
        yield s
    finally:
        s.reap()


# --- reading what a run left ------------------------------------------------------------------


def fatal_line(text: str) -> str:
    """The one ERROR line of a fatal run, which must be the `fatal:` line."""
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, f"expected exactly one ERROR line:\n{text}"
    assert " fatal: storage failed: " in errors[0], text
    return errors[0]


def retry_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "retrying" in line]


def assert_consistent(out: Path, expected: bytes, *, generator: bool) -> Checkpoint:
    """Looks at `out` without recovering it: the checkpoint parses and describes only bytes that
    are on disk and equal to the start of `expected`, ending at a record boundary. Bytes past it
    (not yet durable when the run failed) are allowed: the next start discards them."""
    cp = read_checkpoint(out)
    assert cp is not None, f"no checkpoint in {out}"
    stored = stored_bytes(out)
    assert cp.bytes <= len(stored), f"checkpoint covers {cp.bytes} bytes, disk has {len(stored)}"
    covered = expected[: cp.bytes]
    assert stored[: cp.bytes] == covered, "committed bytes differ from the source"
    assert covered == b"" or covered.endswith(b"\n")
    assert cp.records == covered.count(b"\n")
    assert cp.committed_offset == (cp.records if generator else cp.bytes)
    assert cp.committed_offset <= len(stored)
    return cp


def assert_summary_matches(s: Summary, cp: Checkpoint) -> None:
    """A fresh directory: what the summary calls stored is exactly what the checkpoint holds."""
    assert s.undelivered == s.read - s.stored, s
    assert (s.committed_offset, s.stored, s.stored_bytes) == (cp.committed_offset, cp.records,
                                                              cp.bytes)  # fmt: skip


def finish(
    shovels: Shovels, source: str | Path, out: Path, expected: bytes, log: str, *args: str
) -> str:
    """A restart without faults: exit 0, and the store is exactly `expected`."""
    code, text = shovels.run(["--source", source, "--output-dir", out, *QUIET, *args], log)
    assert code == 0, text
    assert_clean_stderr(text)
    assert stored_bytes(out) == expected, "the store differs from the source after restart"
    return text


def scraper(port: int) -> Callable[[str], float]:
    def value(name: str) -> float:
        code, body = http_get(port, "/metrics")
        assert code == 200, body
        return metric(body, name)

    return value


# --- 1. full filesystem -----------------------------------------------------------------------


def test_full_filesystem_exits_1_naming_enospc_then_resumes_exactly_after_growing(
    tmp_path: Path, tmpfs: Tmpfs, shovels: Shovels
) -> None:
    source = tmp_path / "in.txt"
    data = write_input(source, 175_000, seed=11)
    assert len(data) > 11_000_000
    tmpfs.mount("4m")
    out = tmpfs.path
    code, text = shovels.run(["--source", source, "--output-dir", out, *QUIET], "full.log")
    assert code == 1, text
    assert_clean_stderr(text)
    line = fatal_line(text)
    assert "[ENOSPC]" in line, line
    assert str(out / "segments" / SEGMENT_0) in line, line
    retries = retry_lines(text)
    assert len(retries) == RETRIES, text
    assert all("write segment failed" in r and "[ENOSPC]" in r for r in retries), text
    cp = assert_consistent(out, data, generator=False)
    assert 0 < cp.committed_offset < len(data)
    s = summary(text)
    assert_summary_matches(s, cp)
    assert s.undelivered > 0

    tmpfs.run("-o", "remount,size=64m")
    text = finish(shovels, source, out, data, "resume.log")
    assert f"resuming at offset {cp.committed_offset}" in text
    assert committed(out) == len(data)


# --- 2. read-only mid-run ---------------------------------------------------------------------


def test_output_turning_read_only_mid_run_exits_1_naming_erofs_then_resumes_exactly(
    tmpfs: Tmpfs, shovels: Shovels
) -> None:
    """`mount -o remount,ro` of the tmpfs itself is refused (EBUSY) while shovel holds its
    segment and lock open for writing, so the directory is made read-only the way an operator
    can: a read-only bind mount of it over itself. Every new file (the next checkpoint.tmp)
    then fails with EROFS; removing the ro flag of that layer (`remount,bind,rw`) heals it."""
    n = 200_000
    tmpfs.mount("64m")
    out = tmpfs.path
    args: list[str | Path] = ["--source", f"generate:{n}", "--output-dir", out, *QUIET]
    s = shovels.start([*args, *PACED], "ro.log")
    wait_until(lambda: committed(out) > 0 or s.proc.poll() is not None, what="first commit")
    assert s.proc.poll() is None, s.stderr
    tmpfs.run("--bind", "-o", "ro", str(tmpfs.path))  # mount --bind -o ro DIR DIR
    code = s.wait()
    text = s.stderr
    assert code == 1, text
    assert_clean_stderr(text)
    line = fatal_line(text)
    assert "[EROFS]" in line, line
    assert str(out / "checkpoint.tmp") in line, line
    assert retry_lines(text) == [], "a read-only filesystem does not heal by itself: no retries"
    cp = assert_consistent(out, generated(0, n), generator=True)
    assert 0 < cp.committed_offset < n
    assert_summary_matches(summary(text), cp)

    # The bytes of the group whose checkpoint failed are on disk, past the last checkpoint.
    on_disk = len(stored_bytes(out))
    assert on_disk > cp.bytes

    tmpfs.run("-o", "remount,bind,rw")
    text = finish(shovels, f"generate:{n}", out, generated(0, n), "resume.log", *FAST)
    seg = out / "segments" / SEGMENT_0
    assert (
        f"recovery: discarded {on_disk - cp.bytes} bytes written past the checkpoint at the end "
        f"of {seg}" in text
    ), text
    assert f"resuming at offset {cp.committed_offset}" in text


# --- 3. output directory removed --------------------------------------------------------------


def test_output_directory_removed_mid_run_exits_1_then_a_restart_starts_over_exactly(
    tmp_path: Path, shovels: Shovels
) -> None:
    n = 100_000
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", f"generate:{n}", "--output-dir", out, *QUIET]
    s = shovels.start([*args, *PACED], "removed.log")
    wait_until(lambda: committed(out) > 0 or s.proc.poll() is not None, what="first commit")
    assert s.proc.poll() is None, s.stderr

    def removed() -> bool:
        # A checkpoint being written at the same moment can make one pass fail: try again.
        shutil.rmtree(out, ignore_errors=True)
        return not out.exists()

    wait_until(removed, what=f"rm -rf {out}")
    code = s.wait()
    text = s.stderr
    assert code == 1, text
    assert_clean_stderr(text)
    line = fatal_line(text)
    assert str(out) in line, line
    assert "[ENOENT]" in line, line
    assert f"the output directory {out} no longer exists" in line, line
    assert retry_lines(text) == [], "a removed directory does not come back: no retries"
    assert "No such file or directory" in line, line
    assert not out.exists(), "the failed run re-created part of the removed directory"
    s1 = summary(text)
    assert s1.undelivered == s1.read - s1.stored

    text = finish(shovels, f"generate:{n}", out, generated(0, n), "restart.log", *FAST)
    assert "resuming at offset 0 (0 records already stored)" in text
    assert "recovery:" not in text
    assert committed(out) == n


# --- 4. hung storage --------------------------------------------------------------------------


@pytest.mark.usefixtures("faults_enabled")
def test_hung_fsync_stops_by_the_deadline_with_exit_3_and_a_restart_completes(
    tmp_path: Path, shovels: Shovels
) -> None:
    n = 100_000
    out = tmp_path / "out"
    port = free_port()
    s = shovels.start(
        ["--source", f"generate:{n}", "--output-dir", out, "--generate-rate", "20000",
         "--shutdown-timeout-s", "2", "--metrics-port", str(port), "--status-interval-s", "0"],
        "hung.log",
        faults="before-fsync=delay:30000@3*1",  # the 3rd fsync stalls for 30 s
    )  # fmt: skip
    s.wait_for_log("shovel started")
    value = scraper(port)

    def two_fsyncs_then_more_read() -> bool:
        # The 3rd fsync cannot complete for 30 s, so the count stays at 2 from here on.
        fsyncs = value("shovel_storage_fsyncs_total")
        read = value("shovel_records_read_total")
        return fsyncs == 2 and read > value("shovel_records_stored_total")

    wait_until(two_fsyncs_then_more_read, what="2 fsyncs committed, more records read")
    durable_offset = value("shovel_committed_offset")
    assert durable_offset > 0
    signalled = time.monotonic()
    s.signal(signal.SIGTERM)
    code = s.wait(timeout_s=25)
    took = time.monotonic() - signalled
    text = s.stderr
    assert code == 3, text
    assert took < 10, f"exit took {took:.1f}s after SIGTERM"
    assert_clean_stderr(text)
    assert "SIGTERM received" in text
    assert "close timed out" in text, text
    s1 = summary(text)
    assert s1.undelivered == s1.read - s1.stored > 0, s1
    assert s1.took_s < 2 + 1, s1
    assert f"{s1.undelivered} records were read but are not durable" in text
    cp = assert_consistent(out, generated(0, n), generator=True)
    assert cp.committed_offset == durable_offset
    assert_summary_matches(s1, cp)
    on_disk = len(stored_bytes(out))
    assert on_disk > cp.bytes, "the drained records were expected on disk past the checkpoint"
    report = json.loads((out / REPORT_FILE).read_text())
    assert (report["exit_code"], report["undelivered"]) == (3, s1.undelivered), report

    # The next start shows that stop to Prometheus (the gauges of the run itself were set
    # moments before its exit, when nobody scraped them).
    port = free_port()
    watched = shovels.start(
        ["--source", f"generate:{n}", "--output-dir", out, "--generate-rate", "1000",
         "--metrics-port", str(port), "--status-interval-s", "0"],
        "watched.log",
    )  # fmt: skip
    watched.wait_for_log("shovel started")
    value = scraper(port)
    assert value("shovel_last_stop_exit_code") == 3
    assert value("shovel_last_stop_undelivered_records") == s1.undelivered
    watched.signal(signal.SIGTERM)
    assert watched.wait() == 0, watched.stderr
    text = watched.stderr
    assert f"exit 3, undelivered {s1.undelivered}" in text, text
    seg = out / "segments" / SEGMENT_0
    assert (
        f"recovery: discarded {on_disk - cp.bytes} bytes written past the checkpoint at the end "
        f"of {seg}" in text
    ), text
    assert f"resuming at offset {cp.committed_offset}" in text

    finish(shovels, f"generate:{n}", out, generated(0, n), "restart.log", *FAST)
    assert committed(out) == n


# --- 5. transient write errors ----------------------------------------------------------------


@pytest.mark.usefixtures("faults_enabled")
def test_transient_write_errors_are_retried_and_the_run_is_exact(
    tmp_path: Path, shovels: Shovels
) -> None:
    n = 20_000
    out = tmp_path / "out"
    code, text = shovels.run(
        ["--source", f"generate:{n}", "--output-dir", out, *QUIET, *FAST],
        "retry.log",
        faults="before-write=fail:5@2*3",  # the 2nd, 3rd and 4th appends fail with EIO
    )
    assert code == 0, text
    assert_clean_stderr(text)
    retries = retry_lines(text)
    assert len(retries) == 3, text
    seg = out / "segments" / SEGMENT_0
    for i, line in enumerate(retries, start=1):
        assert f"write segment failed for {seg}" in line, line
        assert "[EIO]" in line, line
        assert f"retrying ({i}/{RETRIES})" in line, line
    assert " ERROR " not in text
    s = summary(text)
    assert (s.read, s.stored, s.committed_offset, s.undelivered) == (n, n, n, 0)
    assert stored_bytes(out) == generated(0, n)
    assert committed(out) == n


@pytest.mark.usefixtures("faults_enabled")
def test_transient_write_errors_show_in_the_retries_metric_and_sigterm_still_exits_0(
    tmp_path: Path, shovels: Shovels
) -> None:
    out = tmp_path / "out"
    port = free_port()
    s = shovels.start(
        ["--source", "generate", "--generate-rate", "20000", "--output-dir", out,
         "--metrics-port", str(port), "--status-interval-s", "0"],
        "retry.log",
        faults="before-write=fail:5@2*3",
    )  # fmt: skip
    s.wait_for_log("shovel started")
    value = scraper(port)
    wait_until(lambda: value("shovel_storage_retries_total") >= 3, what="3 retries")
    # Progress after the retries: commits keep coming.
    after = value("shovel_committed_offset")
    wait_until(lambda: value("shovel_committed_offset") > after, what="commits after retries")
    assert value("shovel_storage_retries_total") == 3
    assert value("shovel_storage_errors_total") == 0
    s.signal(signal.SIGTERM)
    code = s.wait()
    text = s.stderr
    assert code == 0, text
    assert_clean_stderr(text)
    assert len(retry_lines(text)) == 3, text
    assert "undelivered 0" in text
    cp = read_checkpoint(out)
    assert cp is not None
    assert cp.committed_offset > after
    assert stored_bytes(out) == generated(0, cp.committed_offset)


# --- 6. permanent write error -----------------------------------------------------------------


@pytest.mark.usefixtures("faults_enabled")
def test_permanent_write_error_exits_1_keeping_what_was_written_before(
    tmp_path: Path, shovels: Shovels
) -> None:
    n = 20_000
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", f"generate:{n}", "--output-dir", out, *QUIET, *FAST]
    code, text = shovels.run(args, "eio.log", faults="before-write=fail:5@2")
    assert code == 1, text
    assert_clean_stderr(text)
    line = fatal_line(text)
    assert "[EIO]" in line, line
    assert f"write segment failed for {out / 'segments' / SEGMENT_0}" in line, line
    assert len(retry_lines(text)) == RETRIES, text
    cp = assert_consistent(out, generated(0, n), generator=True)
    assert 0 < cp.committed_offset < n
    # The failed append was cut back and the one before it made durable: nothing extra on disk.
    assert stored_bytes(out) == generated(0, cp.committed_offset)
    s = summary(text)
    assert_summary_matches(s, cp)
    assert s.undelivered > 0

    text = finish(shovels, f"generate:{n}", out, generated(0, n), "restart.log", *FAST)
    assert "recovery:" not in text
    assert f"resuming at offset {cp.committed_offset}" in text
    assert committed(out) == n


# --- 7. fsync failure -------------------------------------------------------------------------


@pytest.mark.usefixtures("faults_enabled")
def test_fsync_failure_is_never_retried_exits_1_and_a_restart_completes(
    tmp_path: Path, shovels: Shovels
) -> None:
    n = 20_000
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", f"generate:{n}", "--output-dir", out, *QUIET]
    code, text = shovels.run(
        [*args, "--generate-rate", "20000"], "fsync.log", faults="before-fsync=fail:5@2"
    )
    assert code == 1, text
    assert_clean_stderr(text)
    line = fatal_line(text)
    assert f"fsync segment failed for {out / 'segments' / SEGMENT_0}" in line, line
    assert "[EIO]" in line, line
    assert retry_lines(text) == [], "an fsync must never be retried"
    cp = assert_consistent(out, generated(0, n), generator=True)
    assert 0 < cp.committed_offset < n
    s = summary(text)
    assert_summary_matches(s, cp)
    assert s.undelivered > 0
    assert len(stored_bytes(out)) > cp.bytes, "the unsynced bytes were expected on disk"

    text = finish(shovels, f"generate:{n}", out, generated(0, n), "restart.log", *FAST)
    assert "written past the checkpoint" in text, text
    assert f"resuming at offset {cp.committed_offset}" in text
    assert committed(out) == n


@pytest.mark.usefixtures("faults_enabled")
@pytest.mark.parametrize("point", ["before-write", "before-fsync", "mid-checkpoint"])
def test_panic_on_a_storage_thread_exits_1_cleanly_and_a_restart_completes(
    tmp_path: Path, shovels: Shovels, point: str
) -> None:
    n = 20_000
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", f"generate:{n}", "--output-dir", out, *QUIET]
    code, text = shovels.run(
        [*args, "--generate-rate", "20000"], "panic.log", faults=f"{point}=panic@3"
    )
    assert code == 1, text
    assert f"panic at {point} (hit 3)" in text
    line = fatal_line(text)
    assert "storage task panicked" in line, line
    for bad in ("Fatal Python error", "Task was destroyed", "Event loop is closed"):
        assert bad not in text
    cp = assert_consistent(out, generated(0, n), generator=True)
    assert_summary_matches(summary(text), cp)
    finish(shovels, f"generate:{n}", out, generated(0, n), "restart.log", *FAST)
    assert committed(out) == n


@pytest.mark.usefixtures("faults_enabled")
def test_the_end_of_a_source_is_not_cut_short_by_the_shutdown_timeout(
    tmp_path: Path, shovels: Shovels
) -> None:
    """The drain deadline is for stop signals: a slow disk at the end of a finite source is
    waited for, and the run exits 0."""
    n = 5_000
    out = tmp_path / "out"
    code, text = shovels.run(
        ["--source", f"generate:{n}", "--output-dir", out, *QUIET, *FAST,
         "--shutdown-timeout-s", "0.3"],
        "slow.log",
        faults="before-fsync=delay:700",
    )  # fmt: skip
    assert code == 0, text
    assert "stop phase 'flush'" in text
    assert stored_bytes(out) == generated(0, n)
    assert committed(out) == n


# --- 8. damaged stores ------------------------------------------------------------------------

N_FIRST = 20_000
N_SECOND = 40_000


def make_store(shovels: Shovels, out: Path) -> Checkpoint:
    code, text = shovels.run(
        ["--source", f"generate:{N_FIRST}", "--output-dir", out, *QUIET, *FAST], "first.log"
    )
    assert code == 0, text
    assert stored_bytes(out) == generated(0, N_FIRST)
    cp = read_checkpoint(out)
    assert cp is not None
    return cp


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of the store but the lock (which holds the last opener's pid)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def garbage_checkpoint(out: Path, cp: Checkpoint) -> tuple[Path, str]:
    (out / "checkpoint").write_bytes(b"\0\0garbage\n")
    return out / "checkpoint", "no crc32 line"


def empty_checkpoint(out: Path, cp: Checkpoint) -> tuple[Path, str]:
    (out / "checkpoint").write_bytes(b"")
    return out / "checkpoint", "the file is empty (0 bytes)"


def short_segment(out: Path, cp: Checkpoint) -> tuple[Path, str]:
    seg = out / "segments" / SEGMENT_0
    os.truncate(seg, cp.segment_len - 1000)
    return seg, (
        f"segment holds {cp.segment_len - 1000} bytes but the checkpoint says "
        f"{cp.segment_len} were made durable"
    )


def missing_checkpoint(out: Path, cp: Checkpoint) -> tuple[Path, str]:
    (out / "checkpoint").unlink()
    seg = out / "segments" / SEGMENT_0
    return out / "checkpoint", f"the checkpoint is missing but {seg} holds {cp.segment_len} bytes"


REFUSED = [garbage_checkpoint, empty_checkpoint, short_segment, missing_checkpoint]


@pytest.mark.parametrize("damage", REFUSED, ids=[d.__name__ for d in REFUSED])
def test_damaged_store_is_refused_with_exit_1_naming_the_file_and_left_untouched(
    tmp_path: Path, shovels: Shovels, damage: Callable[[Path, Checkpoint], tuple[Path, str]]
) -> None:
    out = tmp_path / "out"
    cp = make_store(shovels, out)
    path, detail = damage(out, cp)
    before = snapshot(out)
    code, text = shovels.run(
        ["--source", f"generate:{N_SECOND}", "--output-dir", out, *QUIET, *FAST], "refused.log"
    )
    assert code == 1, text
    assert_clean_stderr(text)
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text
    assert f"cannot open it: damaged store file {path}: {detail}" in errors[0]
    assert "shovel started" not in text
    assert snapshot(out) == before, "a refused store must not be modified"


def torn_tail(out: Path, cp: Checkpoint) -> str:
    seg = out / "segments" / SEGMENT_0
    tail = generated(N_FIRST, N_FIRST + 2)[:150]  # a record and part of the next
    with seg.open("ab") as f:
        f.write(tail)
    return f"discarded {len(tail)} bytes written past the checkpoint at the end of {seg}"


def leftover_tmp_checkpoint(out: Path, cp: Checkpoint) -> str:
    (out / "checkpoint.tmp").write_text("shovel-checkpoint 1\ncommitted_offset 99")
    return f"removed {out / 'checkpoint.tmp'} left by an interrupted checkpoint"


def later_segment(out: Path, cp: Checkpoint) -> str:
    seg = out / "segments" / SEGMENT_1
    seg.write_bytes(generated(N_FIRST, N_FIRST + 10))
    size = len(generated(N_FIRST, N_FIRST + 10))
    return f"removed {seg} ({size} bytes) created after the checkpoint"


REPAIRED = [torn_tail, leftover_tmp_checkpoint, later_segment]


@pytest.mark.parametrize("damage", REPAIRED, ids=[d.__name__ for d in REPAIRED])
def test_crash_leftovers_are_repaired_with_a_warning_and_the_run_completes_exactly(
    tmp_path: Path, shovels: Shovels, damage: Callable[[Path, Checkpoint], str]
) -> None:
    out = tmp_path / "out"
    cp = make_store(shovels, out)
    note = damage(out, cp)
    text = finish(shovels, f"generate:{N_SECOND}", out, generated(0, N_SECOND), "repair.log",
                  *FAST)  # fmt: skip
    warnings = [line for line in text.splitlines() if " WARNING shovel: recovery: " in line]
    assert len(warnings) == 1, text
    assert note in warnings[0], warnings[0]
    assert f"resuming at offset {N_FIRST} ({N_FIRST} records already stored)" in text
    assert not (out / "checkpoint.tmp").exists()
    assert not (out / "segments" / SEGMENT_1).exists()
    assert committed(out) == N_SECOND


# --- 9. rejected lines past the committed offset ----------------------------------------------

LONG_LINE = b"L" * 2000 + b"\n"
# `a\n`, a line over --max-record-bytes 1000 (kept in rejected/ at source offset 2), `b\n`.
WITH_LONG_LINE = b"a\n" + LONG_LINE + b"b\n"
REJECTED_AT_2 = f"{2:020d}.rec"
# The first fsync comes when 3 bytes are unsynced: only once `b\n` is written, which the reader
# queues after the long line is kept. With before-fsync=abort the run crashes there: nothing
# committed, the .rec file already whole.
CRASH_AFTER_REJECTING = [
    "--max-record-bytes", "1000", "--fsync-interval-ms", "60000", "--fsync-max-bytes", "3",
]  # fmt: skip


def rejected_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "rejected").iterdir())}


@pytest.mark.usefixtures("faults_enabled")
def test_a_rejected_line_past_the_committed_offset_is_not_kept_twice_after_a_crash(
    tmp_path: Path, shovels: Shovels
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(WITH_LONG_LINE)
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", source, "--output-dir", out, *QUIET]
    code, text = shovels.run(
        [*args, *CRASH_AFTER_REJECTING], "crash.log", faults="before-fsync=abort"
    )
    assert code == -signal.SIGABRT, text
    assert "abort at before-fsync (hit 1)" in text
    assert committed(out) == 0
    assert rejected_files(out) == {REJECTED_AT_2: LONG_LINE}

    # With a larger limit the line is now a record: it must be stored, and only there.
    text = finish(shovels, source, out, WITH_LONG_LINE, "restart.log", "--max-record-bytes", "5000")
    assert rejected_files(out) == {}, "the line is stored, and still in rejected/"
    rec = out / "rejected" / REJECTED_AT_2
    assert (
        f"recovery: removed {rec}: the line at source offset 2 is past the committed offset 0 "
        "and will be read again" in text
    ), text
    assert committed(out) == len(WITH_LONG_LINE)


@pytest.mark.usefixtures("faults_enabled")
def test_a_rejected_line_from_a_stream_past_the_committed_offset_is_kept_aside_not_overwritten(
    tmp_path: Path, shovels: Shovels
) -> None:
    """A stream cannot be read again: its rejected line is the only copy, so recovery keeps it
    under another name, out of the way of the next run's line at the same offset."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    args: list[str | Path] = ["--source", fifo, "--output-dir", out, *QUIET]

    def feed(s: Shovel, data: bytes) -> None:
        # O_RDWR does not wait for a reader; closing it after shovel opened the FIFO ends the
        # stream with the data still in the pipe.
        fd = os.open(fifo, os.O_RDWR)
        try:
            os.write(fd, data)
            s.wait_for_log("shovel started")
        finally:
            os.close(fd)

    s = shovels.start([*args, *CRASH_AFTER_REJECTING], "crash.log", faults="before-fsync=abort")
    feed(s, WITH_LONG_LINE)
    code = s.wait()
    assert code == -signal.SIGABRT, s.stderr
    assert committed(out) == 0
    assert rejected_files(out) == {REJECTED_AT_2: LONG_LINE}

    other_long_line = b"M" * 3000 + b"\n"
    s = shovels.start([*args, "--max-record-bytes", "1000"], "restart.log")
    feed(s, b"c\n" + other_long_line + b"d\n")
    code = s.wait()
    text = s.stderr
    assert code == 0, text
    assert_clean_stderr(text)
    assert rejected_files(out) == {
        REJECTED_AT_2: other_long_line,
        f"{REJECTED_AT_2}.uncommitted": LONG_LINE,
    }, "the first run's line was overwritten"
    rec = out / "rejected" / REJECTED_AT_2
    assert (
        f"recovery: kept {rec} as {rec}.uncommitted: the line at source offset 2 is past the "
        "committed offset 0 and this source cannot be read again" in text
    ), text
    assert stored_bytes(out) == b"c\nd\n"


def test_a_rejected_directory_that_cannot_be_recovered_exits_1_before_reading(
    tmp_path: Path, shovels: Shovels
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "rejected").write_bytes(b"not a directory")
    code, text = shovels.run(
        ["--source", "generate:10", "--output-dir", out, *QUIET, *FAST], "broken.log"
    )
    assert code == 1, text
    assert_clean_stderr(text)
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text
    assert f"cannot recover {out / 'rejected'}: [Errno 20] Not a directory" in errors[0], text
    assert "shovel started" not in text
    assert stored_bytes(out) == b""


# --- 10. a full disk while keeping a rejected line --------------------------------------------

# A line of 3 MiB over --max-record-bytes, streamed into rejected/ in 1 MiB reads, into a
# tmpfs of 1 MiB: its write fails with ENOSPC.
HUGE_LINE = b"H" * (3 * 1024 * 1024) + b"\n"
WITH_HUGE_LINE = HUGE_LINE + b"after\n"


def test_a_rejected_line_on_a_full_disk_is_retried_like_a_segment_and_kept_once_space_comes(
    tmp_path: Path, tmpfs: Tmpfs, shovels: Shovels
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(WITH_HUGE_LINE)
    tmpfs.mount("1m")
    out = tmpfs.path
    s = shovels.start(
        ["--source", source, "--output-dir", out, "--max-record-bytes", "1000", *QUIET],
        "full.log",
    )
    partial = out / "rejected" / f"{0:020d}.rec.partial"
    s.wait_for_log(f"write rejected line failed for {partial}: No space left on device [ENOSPC]")
    tmpfs.run("-o", "remount,size=64m")
    code = s.wait()
    text = s.stderr
    assert code == 0, text
    assert_clean_stderr(text)
    retries = retry_lines(text)
    assert retries, text
    for i, line in enumerate(retries, start=1):
        assert f"write rejected line failed for {partial}" in line, line
        assert f"retrying ({i}/{RETRIES})" in line, line
    assert rejected_files(out) == {f"{0:020d}.rec": HUGE_LINE}
    assert stored_bytes(out) == b"after\n"
    assert committed(out) == len(WITH_HUGE_LINE)


def test_a_rejected_line_on_a_disk_that_stays_full_exits_1_naming_the_file(
    tmp_path: Path, tmpfs: Tmpfs, shovels: Shovels
) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(WITH_HUGE_LINE)
    tmpfs.mount("1m")
    out = tmpfs.path
    code, text = shovels.run(
        ["--source", source, "--output-dir", out, "--max-record-bytes", "1000", *QUIET],
        "full.log",
    )
    assert code == 1, text
    assert_clean_stderr(text)
    partial = out / "rejected" / f"{0:020d}.rec.partial"
    assert len(retry_lines(text)) == RETRIES, text
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert errors, text
    assert (
        f"keeping the line at source offset 0 in rejected/ failed: write rejected line failed "
        f"for {partial}: No space left on device [ENOSPC]" in errors[0]
    ), text
    assert rejected_files(out) == {}, "a line with a piece missing must not be kept"
    assert committed(out) == 0
