"""Following a file with the real `python -m shovel`: start it, append to the file, wait until
what it stored is what is expected, stop it."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import Shovel, assert_clean_stderr, read_checkpoint, stored_bytes, wait_until

FOLLOW = [
    "--follow",
    "--follow-poll-ms", "20",
    "--follow-rotated-quiet-ms", "200",
    "--fsync-interval-ms", "10",
    "--status-interval-s", "0",
]  # fmt: skip


def start(src: Path, out: Path, log: Path, *extra: str) -> Shovel:
    return Shovel(["--source", src, "--output-dir", out, *FOLLOW, *extra], log)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def wait_stored(s: Shovel, out: Path, expected: bytes) -> None:
    def done() -> bool:
        assert s.proc.poll() is None, s.stderr
        cp = read_checkpoint(out)
        return cp is not None and cp.bytes == len(expected) and stored_bytes(out) == expected

    try:
        wait_until(done, what="the expected bytes to be stored")
    except AssertionError:
        s.proc.kill()
        s.wait()
        raise AssertionError(
            f"stored {stored_bytes(out)!r}\nexpected {expected!r}\n{s.stderr}"
        ) from None


def stop(s: Shovel) -> str:
    s.signal(signal.SIGTERM)
    code = s.wait()
    assert code == 0, s.stderr
    assert_clean_stderr(s.stderr)
    assert "undelivered 0" in s.stderr, s.stderr
    return s.stderr


def follow_until(src: Path, out: Path, log: Path, expected: bytes) -> str:
    """Runs shovel until `expected` is stored, then stops it; returns its log."""
    s = start(src, out, log, "--metrics-port", "0")
    wait_stored(s, out, expected)
    return stop(s)


def lines(prefix: str, start: int, stop: int) -> bytes:
    return b"".join(b"%s-%06d\n" % (prefix.encode(), i) for i in range(start, stop))
