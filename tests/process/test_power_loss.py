"""Power loss, simulated for real: a SIGKILL leaves the page cache intact, so it cannot show
whether shovel's fsyncs come in the right order. Here the output directory lives on ext4 in a
file on a loop device, mounted with a 10-minute journal commit so that nothing reaches the
image unless shovel asks for it. shovel is frozen (SIGSTOP) at a random moment, the image is
copied (what was not fsynced is only in the page cache, not in the copy), the copy is mounted
(its journal replays, as after a power cut) and the run is finished there.

Asserted: the committed offset that shovel exported before the freeze survived in the copy,
and the finished output equals the input exactly (records in the segments, over-long lines in
rejected/). Iterations: SHOVEL_POWER_LOSS_ITERATIONS (default 3). Needs root, losetup and
mkfs.ext4; skipped, saying why, where a loop device cannot be set up.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    free_port,
    http_get,
    metric,
    read_checkpoint,
    run_shovel,
    stored_bytes,
    wait_until,
)

ITERATIONS = int(os.environ.get("SHOVEL_POWER_LOSS_ITERATIONS", "3"))
IMAGE_BYTES = 128 << 20
MAX_RECORD = 1000


def _run(*cmd: str | os.PathLike[str]) -> str:
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"{' '.join(map(str, cmd))}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def _why_no_loop_device() -> str | None:
    if os.geteuid() != 0:
        return "not root: mounting a loop device needs root"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextmanager
def mounted(image: Path, mnt: Path, options: str) -> Iterator[Path]:
    """`image` attached to a loop device and mounted on `mnt` with `options`."""
    try:
        loop = _run("losetup", "--find", "--show", image)
    except OSError as e:
        pytest.skip(f"no loop device can be set up here: {e}")
    try:
        mnt.mkdir(exist_ok=True)
        _run("mount", "-t", "ext4", "-o", options, loop, mnt)
        try:
            yield mnt
        finally:
            _run("umount", mnt)
    finally:
        _run("losetup", "--detach", loop)


def make_input(path: Path, rng: random.Random) -> tuple[bytes, bytes, dict[str, bytes]]:
    """A file of varied records with a few lines over MAX_RECORD. Returns the input, the bytes
    the segments must hold, and the rejected/ files it must leave (name -> content)."""
    lines: list[bytes] = []
    for i in range(150_000):
        if rng.random() < 0.0002:
            lines.append(b"long %d " % i + b"x" * rng.randint(MAX_RECORD, 3 * MAX_RECORD) + b"\n")
        else:
            lines.append(b"record %08d %s\n" % (i, b"y" * rng.randint(0, 150)))
    stored, rejected, offset = [], {}, 0
    for line in lines:
        if len(line) - 1 > MAX_RECORD:
            rejected[f"{offset:020d}.rec"] = line
        else:
            stored.append(line)
        offset += len(line)
    data = b"".join(lines)
    path.write_bytes(data)
    return data, b"".join(stored), rejected


def is_stopped(pid: int) -> bool:
    """Whether every thread of `pid` is stopped: none is still inside a write or an fsync."""
    # /proc/PID/task/TID/stat: "tid (comm) STATE ..."; T is stopped by a signal.
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended
        if stat.rsplit(")", 1)[1].split()[0] != "T":
            return False
    return True


def committed_metric(port: int) -> int:
    """What shovel says is committed (0 before its metrics server answers)."""
    try:
        status, text = http_get(port, "/metrics")
    except OSError:
        return 0
    return int(metric(text, "shovel_committed_offset")) if status == 200 else 0


def freeze_and_copy(
    s: Shovel, *, out: Path, port: int, early: bool, target: int, image: Path, copy: Path
) -> int:
    """Freezes shovel at a moment of its start (directory creation, recovery, the first
    writes) when `early`, else once its committed offset passed `target`; copies the disk
    image as a power cut would leave it. Returns the committed offset shovel exported just
    before the freeze."""
    wait_until(
        lambda: (
            s.proc.poll() is not None
            or (early and os.path.exists(out))
            or committed_metric(port) >= target
        ),
        what=f"committed progress past {target}",
    )
    promised = committed_metric(port)
    s.signal(signal.SIGSTOP)
    wait_until(lambda: s.proc.poll() is not None or is_stopped(s.proc.pid), what="the freeze")
    # The power goes: the disk holds only what reached it.
    _run("cp", "--sparse=always", image, copy)
    return promised


@pytest.fixture(scope="module")
def loop_ok() -> None:
    reason = _why_no_loop_device()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.usefixtures("loop_ok")
@pytest.mark.parametrize("iteration", range(ITERATIONS))
def test_power_loss_at_a_random_moment_keeps_every_committed_record(
    tmp_path: Path, iteration: int
) -> None:
    seed = 5000 + iteration
    rng = random.Random(seed)
    source = tmp_path / "in.txt"
    data, expected, expected_rejected = make_input(source, rng)
    image, copy = tmp_path / "disk.img", tmp_path / "after-power-loss.img"
    with image.open("wb") as f:
        f.truncate(IMAGE_BYTES)
    # No lazy initialisation: the kernel would otherwise write to the image in the background.
    _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image)
    port = free_port()
    args: list[str | os.PathLike[str]] = [
        "--source", source,
        "--max-record-bytes", str(MAX_RECORD),
        "--read-chunk-bytes", "65536",
        "--fsync-max-bytes", "131072",
        "--fsync-interval-ms", "5",
        "--max-inflight-bytes", "524288",
        "--segment-max-bytes", "2000000",
        "--status-interval-s", "0",
    ]  # fmt: skip

    # noauto_da_alloc: no writeback of its own when a file is renamed over another, which
    # would hide a missing fsync before a rename.
    with mounted(image, tmp_path / "mnt", "commit=600,noauto_da_alloc") as mnt:
        out = mnt / "out"
        s = Shovel([*args, "--output-dir", out, "--metrics-port", str(port)], tmp_path / "1.log")
        target = int(rng.uniform(0.05, 0.9) * len(data))
        try:
            promised = freeze_and_copy(
                s, out=out, port=port, early=rng.random() < 0.25, target=target, image=image,
                copy=copy,
            )  # fmt: skip
        finally:
            # Also when a wait failed: a live shovel would keep the mount busy.
            if s.proc.poll() is None:
                s.proc.kill()
            s.wait()
        finished_before = "summary:" in s.stderr
    image.unlink()

    with mounted(copy, tmp_path / "mnt2", "defaults") as mnt:
        out = mnt / "out"
        cp = read_checkpoint(out) if out.exists() else None
        survived = cp.committed_offset if cp else 0
        assert survived >= promised, (
            f"seed {seed}: shovel exported committed offset {promised} before the power loss, "
            f"but the disk holds {survived}"
        )
        code, text = run_shovel(
            [*args, "--output-dir", out, "--metrics-port", "0"], tmp_path / "2.log"
        )
        assert code == 0, f"seed {seed}:\n{text}"
        assert_clean_stderr(text)
        assert stored_bytes(out) == expected, f"seed {seed}: the segments differ from the input"
        rejected = {p.name: p.read_bytes() for p in (out / "rejected").iterdir()}
        assert rejected == expected_rejected, f"seed {seed}"
        final = read_checkpoint(out)
        assert final is not None
        assert final.committed_offset == len(data)
    # Not vacuous: the power went while shovel was still at work.
    assert not finished_before, f"seed {seed}: the freeze came after the run had finished"
