"""A restart resumes only the source it was storing: replaced, truncated, rewritten or foreign
sources are refused (exit 1, one line saying what changed), a grown unfinished line is never
split, and a stream says it appends instead of claiming a resume."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

from shovel.storage.rejects import rejected_path
from tests.helpers import assert_clean_stderr, read_checkpoint, run_shovel, stored_bytes

QUIET = ["--metrics-port", "0", "--status-interval-s", "0"]


def store(source: str | Path, out: Path, log: Path, *extra: str) -> tuple[int, str]:
    return run_shovel(["--source", source, "--output-dir", out, *QUIET, *extra], log)


def refused(code: int, text: str, *needles: str) -> None:
    assert code == 1, text
    assert "refusing to start" in text or "fatal:" in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert_clean_stderr(text)


def test_a_replaced_file_is_refused_not_resumed_mid_line(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    first = b"record-1\nrecord-2\nrecord-3\nrec4\n"
    src.write_bytes(first)
    assert store(src, out, tmp_path / "1.log")[0] == 0
    src.rename(tmp_path / "in.txt.old")
    src.write_bytes(b"new-1\nnew-2\nnew-3\nnew-4\nnew-5\nnew-6\nnew-7\n")
    code, text = store(src, out, tmp_path / "2.log")
    refused(code, text, "is not the file this output directory was storing", "inode", "--follow")
    assert stored_bytes(out) == first


def test_the_same_file_grown_resumes_exactly(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"a\nb\n")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    with src.open("ab") as f:
        f.write(b"c\nd\n")
    code, text = store(src, out, tmp_path / "2.log")
    assert code == 0, text
    assert "resuming at offset 4 (2 records already stored)" in text
    assert stored_bytes(out) == b"a\nb\nc\nd\n"


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"one\ntwo\nthree\n")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    with src.open("r+b") as f:
        f.truncate(4)
    refused(*store(src, out, tmp_path / "2.log"), "truncated")
    assert stored_bytes(out) == b"one\ntwo\nthree\n"


def test_a_file_rewritten_in_place_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"one\ntwo\n")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    with src.open("r+b") as f:  # same inode, same length, other bytes
        f.write(b"ONE\ntwo\nthree\n")
    refused(*store(src, out, tmp_path / "2.log"), "first 8 bytes", "rewritten")


def test_a_growing_unfinished_line_is_never_split(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    first = b"line-1\nline-2-par"
    src.write_bytes(first)
    assert store(src, out, tmp_path / "1.log")[0] == 0
    assert stored_bytes(out) == b"line-1\nline-2-par\n"
    with src.open("ab") as f:
        f.write(b"tial\nline-3\n")
    code, text = store(src, out, tmp_path / "2.log")
    # The rest of the line is not a record of its own: it is kept apart, and the run goes on.
    assert code == 0, text
    assert "WARNING" in text, text
    assert "continued its last line" in text, text
    assert stored_bytes(out) == b"line-1\nline-2-par\nline-3\n"
    assert rejected_path(out, len(first)).read_bytes() == b"tial\n"


def test_a_continuation_set_apart_and_continued_again_is_never_a_record(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"one\ntwo-part1")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    with src.open("ab") as f:
        f.write(b"-part2")
    assert store(src, out, tmp_path / "2.log")[0] == 0
    with src.open("ab") as f:
        f.write(b"-part3\nthree\n")
    code, text = store(src, out, tmp_path / "3.log")
    assert code == 0, text
    # The line's end is kept apart in pieces, each under its offset; no piece is a record.
    assert stored_bytes(out) == b"one\ntwo-part1\nthree\n"
    first = len(b"one\ntwo-part1")
    assert rejected_path(out, first).read_bytes() == b"-part2"
    assert rejected_path(out, first + len(b"-part2")).read_bytes() == b"-part3\n"


def test_a_continuation_that_starts_with_the_newline_is_joined(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"line-1\nline-2")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    with src.open("ab") as f:
        f.write(b"\nline-3\n")
    code, text = store(src, out, tmp_path / "2.log")
    assert code == 0, text
    assert stored_bytes(out) == b"line-1\nline-2\nline-3\n"
    cp = read_checkpoint(out)
    assert cp is not None
    assert cp.committed_offset == len(b"line-1\nline-2\nline-3\n")


def test_a_generator_directory_refuses_a_file(tmp_path: Path) -> None:
    out, src = tmp_path / "out", tmp_path / "in.txt"
    code, text = store("generate:50", out, tmp_path / "1.log", "--generate-rate", "0")
    assert code == 0, text
    src.write_bytes(b"x\n" * 100)
    refused(*store(src, out, tmp_path / "2.log"), "the generator", "new --output-dir")


def test_a_file_directory_refuses_the_generator_and_a_stream(tmp_path: Path) -> None:
    out, src = tmp_path / "out", tmp_path / "in.txt"
    src.write_bytes(b"x\n" * 100)
    assert store(src, out, tmp_path / "1.log")[0] == 0
    refused(*store("generate:500", out, tmp_path / "2.log"), "from the file", "generator")
    with src.open("rb") as stdin:
        code, text = run_shovel(
            ["--source", "-", "--output-dir", out, *QUIET], tmp_path / "3.log", stdin=stdin.fileno()
        )
    refused(code, text, "from the file", "stream")
    assert stored_bytes(out) == b"x\n" * 100


def test_a_stream_appends_and_never_claims_a_resume(tmp_path: Path) -> None:
    out, five = tmp_path / "out", tmp_path / "five.txt"
    five.write_bytes(b"1\n2\n3\n4\n5\n")
    for run in (1, 2):
        with five.open("rb") as stdin:
            code, text = run_shovel(
                ["--source", "-", "--output-dir", out, *QUIET],
                tmp_path / f"{run}.log",
                stdin=stdin.fileno(),
            )
        assert code == 0, text
        assert "resuming" not in text, text
        assert "appending what it delivers (a stream is never re-read)" in text
        assert "a SIGKILL loses what was read but not yet committed" in text
    assert stored_bytes(out) == b"1\n2\n3\n4\n5\n" * 2


def test_a_checkpoint_from_before_source_identity_still_resumes(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"a\nb\nc\n")
    (out / "segments").mkdir(parents=True)
    (out / "segments" / "00000000000000000000.seg").write_bytes(b"a\n")
    body = "shovel-checkpoint 1\ncommitted_offset 2\nrecords 1\nbytes 2\nsegment 0\nsegment_len 2\n"
    (out / "checkpoint").write_text(f"{body}crc32 {zlib.crc32(body.encode()):08x}\n")
    code, text = store(src, out, tmp_path / "1.log")
    assert code == 0, text
    assert "does not say which file it belongs to" in text
    assert stored_bytes(out) == b"a\nb\nc\n"
    cp = read_checkpoint(out)
    assert cp is not None
    assert '"kind":"file"' in cp.source


def test_the_same_file_under_another_name_resumes(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_bytes(b"a\nb\n")
    assert store(src, out, tmp_path / "1.log")[0] == 0
    moved = tmp_path / "moved.txt"
    os.link(src, moved)
    with moved.open("ab") as f:
        f.write(b"c\n")
    code, text = store(moved, out, tmp_path / "2.log")
    assert code == 0, text
    assert stored_bytes(out) == b"a\nb\nc\n"


def test_follow_needs_a_file(tmp_path: Path) -> None:
    code, text = store("generate", tmp_path / "out", tmp_path / "1.log", "--follow")
    assert code == 2, text
    assert "--follow: reads a file, and the source is" in text
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"exec 3>{fifo}; sleep 30"])
    try:
        code, text = store(fifo, tmp_path / "out2", tmp_path / "2.log", "--follow")
    finally:
        writer.kill()
        writer.wait()
    assert code == 2, text
    assert "is a named pipe" in text
