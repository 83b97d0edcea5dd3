"""Inputs that break naive pipelines: long lines, odd bytes, empty files, a moving source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_clean_stderr, committed, read_checkpoint, run_shovel, stored_bytes

QUIET = ["--metrics-port", "0", "--status-interval-s", "0"]
# Runs a command and reports its own peak RSS (see its docstring).
LAUNCH = Path(__file__).resolve().parents[2] / "bench" / "launch.py"


def shovel_file(tmp_path: Path, data: bytes, *args: str) -> tuple[int, str, Path]:
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    out = tmp_path / "out"
    code, text = run_shovel(
        ["--source", source, "--output-dir", out, *QUIET, *args], tmp_path / "log"
    )
    return code, text, out


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n\n\n\n",
        b"no newline at all",
        b"crlf\r\nlines\r\n",
        b"nul\x00bytes\x00\n\x00\n",
        b"invalid \xff\xfe\xfd utf-8\n\xc3\x28\n",
    ],
    ids=["empty", "only-newlines", "no-newline", "crlf", "nul", "invalid-utf8"],
)
def test_odd_inputs_are_stored_byte_exact(tmp_path: Path, data: bytes) -> None:
    code, text, out = shovel_file(tmp_path, data)
    assert code == 0, text
    assert_clean_stderr(text)
    expected = data if data.endswith(b"\n") or not data else data + b"\n"
    assert stored_bytes(out) == expected
    assert committed(out) == len(data)


def test_long_lines_are_set_apart_whole_with_their_offsets(tmp_path: Path) -> None:
    long_a = b"A" * 5000 + b"\n"
    long_b = b"B" * 3000  # the last line, without a newline
    data = b"first\n" + long_a + b"middle\n" + long_b
    code, text, out = shovel_file(tmp_path, data, "--max-record-bytes", "1000")
    assert code == 0, text
    assert stored_bytes(out) == b"first\nmiddle\n"
    assert committed(out) == len(data)
    rejected = {p.name: p.read_bytes() for p in (out / "rejected").iterdir()}
    assert rejected == {f"{6:020d}.rec": long_a, f"{6 + len(long_a) + 7:020d}.rec": long_b}
    assert "line at source offset 6 is 5001 bytes, over --max-record-bytes 1000" in text
    # Running again stores nothing twice.
    code, text = run_shovel(
        ["--source", tmp_path / "in.txt", "--output-dir", out, *QUIET], tmp_path / "log2"
    )
    assert code == 0, text
    assert stored_bytes(out) == b"first\nmiddle\n"


def test_a_200_mb_single_line_is_rejected_with_bounded_memory(tmp_path: Path) -> None:
    source = tmp_path / "huge.txt"
    block = b"h" * (1 << 20)
    with source.open("wb") as f:
        f.write(b"before\n")
        for _ in range(200):
            f.write(block)
        f.write(b"\nafter\n")
    out = tmp_path / "out"
    report = tmp_path / "launch.json"
    # Through the benchmarks' launcher: a child started straight from this test process would
    # report at least this process's own peak RSS (Linux keeps it across execve), which grows
    # with the tests run before this one.
    with (tmp_path / "log").open("wb") as log:
        subprocess.run(
            [sys.executable, "-I", "-S", LAUNCH, report,
             sys.executable, "-m", "shovel", "--source", source, "--output-dir", out, *QUIET],
            stderr=log, check=True,
        )  # fmt: skip
    text = (tmp_path / "log").read_text()
    launched = json.loads(report.read_text())
    assert launched["exit_code"] == 0, text
    peak_mib = launched["maxrss_kib"] / 1024
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
    assert stored_bytes(out) == b"before\nafter\n"
    kept = out / "rejected" / f"{7:020d}.rec"
    assert kept.stat().st_size == 200 * (1 << 20) + 1
    assert committed(out) == source.stat().st_size


def test_a_source_shorter_than_the_committed_offset_is_refused(tmp_path: Path) -> None:
    data = b"".join(b"row %d\n" % i for i in range(1000))
    code, text, out = shovel_file(tmp_path, data)
    assert code == 0, text
    (tmp_path / "in.txt").write_bytes(data[:100])
    code, text = run_shovel(
        ["--source", tmp_path / "in.txt", "--output-dir", out, *QUIET], tmp_path / "log2"
    )
    assert code == 1, text
    assert "holds 100 bytes but 7890 were already stored from it: it was truncated" in text
    assert "Traceback" not in text
    cp = read_checkpoint(out)
    assert cp is not None
    assert cp.committed_offset == len(data)
    assert stored_bytes(out) == data
