"""`--follow` against a model: a hypothesis state machine appends whole lines and unfinished
ones, rotates by rename and by copy + truncate, stops shovel with SIGTERM and SIGKILL and
starts it again, in any order, and checks that what is stored is always a prefix of the lines
written and, at the end, all of them: every complete line exactly once, in order.

What the model holds to, because no tailer can do otherwise (docs/sources.md, "Follow", limits):
- a file is rotated only after shovel has read what was written to the one before it (two
  rotations before shovel sees the first would hide the file in between); in the stopped
  case, only after a run that had stored everything written;
- a file holding only an unfinished line is not rotated (nothing of it was committed, so a
  restart cannot know it existed).
An unfinished line that is rotated away is a record with a newline added: the file ended.
Copy + truncate happens here with no write between the copy and the truncate, so nothing is
lost to it. Examples: SHOVEL_FOLLOW_EXAMPLES (default 6), steps per example:
SHOVEL_FOLLOW_STEPS (default 14).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    read_checkpoint,
    stored_bytes,
    wait_until,
)

EXAMPLES = int(os.environ.get("SHOVEL_FOLLOW_EXAMPLES", "6"))
STEPS = int(os.environ.get("SHOVEL_FOLLOW_STEPS", "14"))

FOLLOW = [
    "--follow",
    "--follow-poll-ms", "10",
    "--follow-rotated-quiet-ms", "100",
    "--fsync-interval-ms", "5",
    "--read-chunk-bytes", "4096",
    "--status-interval-s", "0",
    "--metrics-port", "0",
]  # fmt: skip


class FollowModel(RuleBasedStateMachine):
    """The followed file, the lines written to it, and a shovel process that may be running."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="shovel-follow-model-"))
        self.src = self.dir / "app.log"
        self.src.write_bytes(b"")
        self.out = self.dir / "out"
        # Every complete line written, in order: what must end up stored.
        self.expected = bytearray()
        # The current file's unfinished last line, and how many complete lines it holds.
        self.partial = b""
        self.complete_here = 0
        self.counter = 0
        self.rotations = 0
        self.runs = 0
        self.shovel: Shovel | None = None
        # Every complete line written is committed, and nothing was written or rotated since.
        self.settled = True

    # -- writing ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self.src.open("ab") as f:
            f.write(data)

    def _line(self) -> bytes:
        self.counter += 1
        return b"line-%07d %s\n" % (self.counter, b"z" * (self.counter * 37 % 120))

    @rule(n=st.integers(1, 600))
    def append_lines(self, n: int) -> None:
        data = bytearray()
        if self.partial:
            data += b"-end\n"
            self.expected += self.partial + b"-end\n"
            self.partial = b""
            self.complete_here += 1
        lines = b"".join(self._line() for _ in range(n))
        data += lines
        self.expected += lines
        self.complete_here += n
        self._write(bytes(data))
        self.settled = False

    @precondition(lambda self: not self.partial)
    @rule()
    def append_unfinished_line(self) -> None:
        self.counter += 1
        self.partial = b"unfinished-%07d" % self.counter
        self._write(self.partial)
        self.settled = False

    # -- rotating --------------------------------------------------------------------------

    def _may_rotate(self) -> bool:
        if self.partial and self.complete_here == 0:
            return False
        return self.shovel is not None or self.settled

    def _rotated(self) -> None:
        if self.partial:
            # The file ended with it: shovel completes it with a newline.
            self.expected += self.partial + b"\n"
            self.partial = b""
        self.complete_here = 0
        self.rotations += 1
        self.settled = False

    @precondition(_may_rotate)
    @rule()
    def rotate_by_rename(self) -> None:
        if self.shovel is not None:
            self._catch_up()
        self.src.rename(self.dir / f"app.log.{self.rotations + 1}")
        self.src.write_bytes(b"")
        self._rotated()

    @precondition(_may_rotate)
    @rule()
    def rotate_by_copytruncate(self) -> None:
        if self.shovel is not None:
            self._catch_up()
        shutil.copyfile(self.src, self.dir / f"app.log.{self.rotations + 1}")
        with self.src.open("r+b") as f:
            f.truncate(0)
        self._rotated()

    # -- running ---------------------------------------------------------------------------

    @precondition(lambda self: self.shovel is None)
    @rule()
    def start(self) -> None:
        self.runs += 1
        self.shovel = Shovel(
            ["--source", self.src, "--output-dir", self.out, *FOLLOW],
            self.dir / f"run{self.runs}.log",
        )
        # Before its handlers exist, a SIGTERM kills Python outright (tested elsewhere); and
        # a file renamed between the identity check and the open makes the start fail on
        # purpose ("replaced while shovel was starting"): let the start complete.
        s = self.shovel
        s.wait_for_log("shovel started")

    def _check_prefix(self, upto: int) -> None:
        stored = stored_bytes(self.out)
        assert len(stored) >= upto, f"the checkpoint covers {upto} bytes, the disk {len(stored)}"
        stored = stored[:upto]
        assert stored == self.expected[: len(stored)], (
            f"stored is not a prefix of what was written:\nstored   {stored[-300:]!r}\n"
            f"expected {bytes(self.expected[len(stored) - 300 : len(stored) + 100])!r}"
        )

    def _committed_bytes(self) -> int:
        cp = read_checkpoint(self.out)
        return cp.bytes if cp else 0

    def _catch_up(self) -> None:
        """Waits until every complete line written is committed; checks it is exact."""
        s = self.shovel
        assert s is not None
        target = len(self.expected)

        def done() -> bool:
            assert s.proc.poll() is None, f"shovel exited:\n{s.stderr}"
            return self._committed_bytes() >= target

        wait_until(done, what=f"{target} bytes committed")
        stored = stored_bytes(self.out)
        assert stored == self.expected, (
            f"stored {len(stored)} bytes, expected {target}:\n{stored[-400:]!r}\n"
            f"{bytes(self.expected[-400:])!r}\n{s.stderr}"
        )

    @precondition(lambda self: self.shovel is not None)
    @rule()
    def settle(self) -> None:
        self._catch_up()
        self.settled = True

    @precondition(lambda self: self.shovel is not None)
    @rule()
    def sigterm(self) -> None:
        s = self.shovel
        assert s is not None
        s.signal(signal.SIGTERM)
        code = s.wait()
        self.shovel = None
        assert code == 0, s.stderr
        assert_clean_stderr(s.stderr)
        assert "undelivered 0" in s.stderr or "nothing was read" in s.stderr, s.stderr
        # A graceful stop commits all it stored.
        stored = stored_bytes(self.out)
        assert self._committed_bytes() == len(stored), s.stderr
        self._check_prefix(len(stored))

    @precondition(lambda self: self.shovel is not None)
    @rule()
    def sigkill(self) -> None:
        s = self.shovel
        assert s is not None
        s.proc.kill()
        s.wait()
        self.shovel = None
        # What the checkpoint covers is exact; the rest is discarded at the next start.
        self._check_prefix(self._committed_bytes())

    def teardown(self) -> None:
        try:
            if self.shovel is None:
                self.start()
            self._catch_up()
            self.sigterm()
            assert stored_bytes(self.out) == self.expected
        finally:
            if self.shovel is not None:
                self.shovel.proc.kill()
                self.shovel.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


FollowModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
test_follow_matches_the_model = FollowModel.TestCase
