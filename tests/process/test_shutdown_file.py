"""Stopping `python -m shovel` while it stores a large file: nothing read is lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    committed,
    read_checkpoint,
    run_shovel,
    stored_bytes,
    wait_until,
)

# Slow enough to be caught mid-way: small fsync groups, little in flight, a short queue.
SLOW = [
    "--metrics-port", "0",
    "--read-chunk-bytes", "65536",
    "--queue-max-batches", "2",
    "--fsync-max-bytes", "65536",
    "--max-inflight-bytes", "131072",
    "--segment-max-bytes", "4000000",
]  # fmt: skip


def assert_exact_prefix(out: Path, data: bytes) -> int:
    """The store is a prefix of `data` ending at a record boundary, as long as the committed
    offset says; returns its length."""
    stored = stored_bytes(out)
    cp = read_checkpoint(out)
    assert cp is not None
    assert len(stored) == cp.committed_offset == cp.bytes
    assert stored == data[: len(stored)], "stored bytes differ from the input"
    assert stored == b"" or stored.endswith(b"\n")
    assert cp.records == stored.count(b"\n")
    return len(stored)


def finish_and_compare(out: Path, source: Path, data: bytes, log: Path) -> None:
    code, text = run_shovel(["--source", source, "--output-dir", out, "--metrics-port", "0"], log)
    assert code == 0, text
    assert_clean_stderr(text)
    assert stored_bytes(out) == data
    assert committed(out) == len(data)


def stop_after(
    tmp_path: Path, source: Path, args: list[str], min_committed: int, sigs: list[int]
) -> tuple[int, Shovel]:
    """Starts shovel, waits until more than `min_committed` is committed, sends `sigs`;
    returns the exit code and the process."""
    out = tmp_path / "out"
    s = Shovel(["--source", source, "--output-dir", out, *args], tmp_path / "run1.log")
    wait_until(lambda: committed(out) > min_committed or s.proc.poll() is not None, what="progress")
    for sig in sigs:
        s.signal(sig)
    code = s.wait()
    assert_clean_stderr(s.stderr)
    return code, s


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("fraction", [0.0, 0.15, 0.4])
def test_stop_mid_file_keeps_exact_prefix_and_resume_completes(
    tmp_path: Path, big_input: tuple[Path, bytes], sig: int, fraction: float
) -> None:
    source, data = big_input
    threshold = int(len(data) * fraction)
    code, s = stop_after(tmp_path, source, SLOW, threshold, [sig])
    assert code == 0, s.stderr
    prefix = assert_exact_prefix(tmp_path / "out", data)
    assert threshold < prefix < len(data), "the stop did not land mid-file"
    assert f"{signal.Signals(sig).name} received" in s.stderr
    assert "undelivered 0" in s.stderr
    finish_and_compare(tmp_path / "out", source, data, tmp_path / "run2.log")


def test_second_sigterm_during_drain_never_loses_committed_records(
    tmp_path: Path, big_input: tuple[Path, bytes]
) -> None:
    source, data = big_input
    code, s = stop_after(tmp_path, source, SLOW, 0, [signal.SIGTERM, signal.SIGTERM])
    assert code in (0, 3), s.stderr
    assert (code == 3) == ("undelivered 0" not in s.stderr), s.stderr
    assert_exact_prefix(tmp_path / "out", data)
    finish_and_compare(tmp_path / "out", source, data, tmp_path / "run2.log")


def test_sigterm_while_reader_is_blocked_on_a_full_queue(
    tmp_path: Path, big_input: tuple[Path, bytes]
) -> None:
    source, data = big_input
    args = [*SLOW, "--queue-max-batches", "1", "--max-inflight-bytes", "65536"]
    code, s = stop_after(tmp_path, source, args, 1_000_000, [signal.SIGTERM])
    assert code == 0, s.stderr
    assert 1_000_000 < assert_exact_prefix(tmp_path / "out", data) < len(data)
    finish_and_compare(tmp_path / "out", source, data, tmp_path / "run2.log")


def test_a_complete_run_twice_stores_the_file_once(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    data = b"".join(b"record %d\n" % i for i in range(10_000)) + b"last line without newline"
    source.write_bytes(data)
    out = tmp_path / "out"
    for run in range(2):
        code, text = run_shovel(
            ["--source", f"file:{source}", "--output-dir", out, "--metrics-port", "0"],
            tmp_path / f"run{run}.log",
        )
        assert code == 0, text
        assert stored_bytes(out) == data + b"\n"
        assert committed(out) == len(data)
    assert f"resuming at offset {len(data)}" in text
