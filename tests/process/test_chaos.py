"""Chaos: kills and stops at random moments, crashes at every fault window, lifecycle churn.

Iteration counts default to what CI can afford; raise them for a soak, e.g.
`SHOVEL_CHAOS_ITERATIONS=1000 SHOVEL_LIFECYCLE_CYCLES=1000 make test-python`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shovel.storage import FAULT_INJECTION
from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    committed,
    generated,
    handles_sigterm,
    read_checkpoint,
    run_shovel,
    stored_bytes,
    wait_until,
    write_input,
)

ITERATIONS = int(os.environ.get("SHOVEL_CHAOS_ITERATIONS", "50"))
CYCLES = int(os.environ.get("SHOVEL_LIFECYCLE_CYCLES", "200"))

# Small groups and segments so that kills land in every phase: append, fsync, checkpoint,
# rollover.
CHURN = [
    "--metrics-port", "0",
    "--status-interval-s", "0",
    "--read-chunk-bytes", "32768",
    "--fsync-max-bytes", "65536",
    "--max-inflight-bytes", "262144",
    "--segment-max-bytes", "300000",
]  # fmt: skip


@pytest.fixture(scope="module")
def chaos_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("chaos") / "in.txt"
    return path, write_input(path, 200_000, seed=3)


def kill_at_random(
    args: Sequence[str | os.PathLike[str]],
    out: Path,
    log: Path,
    rng: random.Random,
    sig: int,
    *,
    end: int,
) -> int:
    """Starts shovel and signals it at a random point: in a third of the runs at a random
    moment of its first half second (imports, recovery, the first writes) but before half of
    the work is committed, otherwise once the committed offset has passed a random point
    between where it started and `end` (the end of the source), so that the signal lands in
    the middle of real work on a machine of any speed. Returns the exit code."""
    start = committed(out)
    s = Shovel(args, log)
    if sig != signal.SIGKILL:
        wait_until(lambda: handles_sigterm(s.proc.pid) or s.proc.poll() is not None)
    if rng.random() < 1 / 3:
        moment = time.monotonic() + rng.uniform(0, 0.5)
        target = start + 0.5 * (end - start)
    else:
        moment = float("inf")
        target = start + rng.uniform(0.05, 0.9) * (end - start)
    wait_until(
        lambda: time.monotonic() >= moment or committed(out) >= target or s.proc.poll() is not None
    )
    if s.proc.poll() is None:
        s.signal(sig)
    return s.wait()


def assert_prefix_of(out: Path, data: bytes, seed: int) -> int:
    stored = stored_bytes(out)
    cp = read_checkpoint(out)
    n = cp.committed_offset if cp else 0
    # After a SIGKILL the tail past the checkpoint is discarded at the next start; what the
    # checkpoint covers must already be exact.
    assert stored[:n] == data[:n], f"seed {seed}: committed bytes differ from the input"
    return n


@pytest.mark.parametrize("iteration", range(ITERATIONS))
def test_random_sigkills_then_completion_is_exact(
    tmp_path: Path, chaos_input: tuple[Path, bytes], iteration: int
) -> None:
    source, data = chaos_input
    rng = random.Random(1000 + iteration)
    out = tmp_path / "out"
    args: list[str | os.PathLike[str]] = ["--source", source, "--output-dir", out, *CHURN]
    landed = 0
    for kill in range(3):
        log = tmp_path / f"kill{kill}.log"
        code = kill_at_random(args, out, log, rng, signal.SIGKILL, end=len(data))
        assert code in (-signal.SIGKILL, 0), (iteration, code)
        assert_prefix_of(out, data, 1000 + iteration)
        # Killed before its summary: the kill cut into startup, writes, fsyncs or the close.
        landed += code == -signal.SIGKILL and "summary:" not in log.read_text()
    assert landed, f"seed {1000 + iteration}: every kill came after the work was done"
    code, text = run_shovel(args, tmp_path / "final.log")
    assert code == 0, text
    assert_clean_stderr(text)
    assert stored_bytes(out) == data, f"seed {1000 + iteration}"
    assert committed(out) == len(data)


@pytest.mark.parametrize("iteration", range(ITERATIONS))
def test_random_sigterms_always_exit_0_with_an_exact_prefix(tmp_path: Path, iteration: int) -> None:
    rng = random.Random(2000 + iteration)
    out = tmp_path / "out"
    n = 40_000
    args: list[str | os.PathLike[str]] = [
        "--source", f"generate:{n}", "--generate-rate", "40000", "--output-dir", out, *CHURN
    ]  # fmt: skip
    for stop in range(3):
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        code = kill_at_random(args, out, tmp_path / f"stop{stop}.log", rng, sig, end=n)
        text = (tmp_path / f"stop{stop}.log").read_text()
        assert code == 0, f"seed {2000 + iteration}:\n{text}"
        assert_clean_stderr(text)
        assert stored_bytes(out) == generated(0, committed(out)), f"seed {2000 + iteration}"
    code, text = run_shovel(args, tmp_path / "final.log")
    assert code == 0, text
    assert stored_bytes(out) == generated(0, n)


WINDOWS = [
    ("before-write", 5),
    ("before-fsync", 4),
    ("after-fsync", 4),
    ("mid-checkpoint", 4),
    ("after-checkpoint", 4),
    ("mid-rollover", 2),
]


@pytest.mark.skipif(not FAULT_INJECTION, reason="this build has no fault-injection hooks")
@pytest.mark.parametrize(("point", "hit"), WINDOWS, ids=[p for p, _ in WINDOWS])
def test_crash_in_each_window_then_restart_is_exact(
    tmp_path: Path, chaos_input: tuple[Path, bytes], point: str, hit: int
) -> None:
    source, data = chaos_input
    out = tmp_path / "out"
    args: list[str | os.PathLike[str]] = ["--source", source, "--output-dir", out, *CHURN]
    env = {**os.environ, "SHOVEL_FAULTS": f"{point}={'abort'}@{hit}"}
    with (tmp_path / "crash.log").open("wb") as log:
        code = subprocess.run(
            [sys.executable, "-m", "shovel", *map(str, args)], stderr=log, env=env, check=False
        ).returncode
    text = (tmp_path / "crash.log").read_text()
    assert code == -signal.SIGABRT, text
    assert f"abort at {point} (hit {hit})" in text
    committed_before = assert_prefix_of(out, data, 0)
    assert committed_before < len(data)
    code, text = run_shovel(args, tmp_path / "restart.log")
    assert code == 0, text
    assert_clean_stderr(text)
    assert stored_bytes(out) == data
    if point in ("after-fsync", "mid-checkpoint", "mid-rollover"):
        # Bytes or files past the checkpoint were there and had to be discarded.
        assert "recovery:" in text, text


def test_pid_1_in_a_pid_namespace_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"], check=False,
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot create a PID namespace here: {probe.stderr.strip()}")
    out = tmp_path / "out"
    script = tmp_path / "as_pid1.sh"
    # Inside the namespace the shell execs Python, which becomes PID 1.
    script.write_text(
        f"exec {sys.executable} -m shovel --source generate --generate-rate 20000 "
        f"--output-dir {out} --metrics-port 0 --status-interval-s 0\n"
    )
    with (tmp_path / "log").open("wb") as log:
        outer = subprocess.Popen(
            [unshare, "--pid", "--fork", "--mount-proc", "sh", str(script)],
            stderr=log,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")},
        )
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
        wait_until(lambda: children.read_text().strip() != "", what="PID 1 started")
        pid1 = int(children.read_text().split()[0])
        status = Path(f"/proc/{pid1}/status").read_text()
        ns_pid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
        assert ns_pid[-1] == "1", ns_pid  # PID 1 inside the namespace
        wait_until(lambda: handles_sigterm(pid1) and committed(out) > 1000, what="running")
        os.kill(pid1, signal.SIGTERM)
        code = outer.wait(60)
    text = (tmp_path / "log").read_text()
    assert code == 0, text
    assert_clean_stderr(text)
    assert "SIGTERM received" in text
    assert stored_bytes(out) == generated(0, committed(out))


UNCLOSED_CLIENT = """
    import asyncio
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    async def main():
        s = await Storage.open(StorageConfig(Path("out"), 1 << 20, 50, 1 << 20, 1 << 24))
        data = b"x" * 99 + b"\\n"
        for i in range(50):
            await s.write(Batch(data * 100, 100, (i + 1) * 10_000))
    asyncio.run(main())
"""

SPAWN_CLOSER = """
    import asyncio, multiprocessing
    from pathlib import Path
    from shovel.batches import Batch
    from shovel.storage import Storage, StorageConfig

    def child():
        async def main():
            s = await Storage.open(StorageConfig(Path("out"), 1 << 20, 5, 1 << 20, 1 << 24))
            await s.write(Batch(b"child\\n", 1, 6))
            await s.close(10)
        asyncio.run(main())

    if __name__ == "__main__":
        p = multiprocessing.get_context("spawn").Process(target=child)
        p.start()
        p.join(60)
        raise SystemExit(p.exitcode)
"""


def _cycle(kind: str, workdir: Path) -> tuple[int, str, bytes, bytes]:
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
    if kind == "service":
        cmd = [sys.executable, "-m", "shovel", "--source", "generate:200", "--generate-rate",
               "0", "--metrics-port", "0", "--output-dir", "out"]  # fmt: skip
    else:
        script = workdir / "script.py"
        script.write_text(textwrap.dedent(UNCLOSED_CLIENT if kind == "unclosed" else SPAWN_CLOSER))
        cmd = [sys.executable, "-X", "dev", str(script)]
    r = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=120,
                       check=False)  # fmt: skip
    stored = stored_bytes(workdir / "out")
    expected = {
        "service": generated(0, 200),
        "unclosed": (b"x" * 99 + b"\n") * 5000,
        "spawn": b"child\n",
    }[kind]
    shutil.rmtree(workdir)
    return r.returncode, r.stderr, stored, expected


@pytest.mark.parametrize("kind", ["service", "unclosed", "spawn"])
def test_lifecycle_stress_leaves_no_teardown_errors(tmp_path: Path, kind: str) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: _cycle(kind, tmp_path / f"c{i}"), range(CYCLES)))
    for i, (code, stderr, stored, expected) in enumerate(results):
        assert code == 0, f"cycle {i}: exit {code}\n{stderr}"
        assert_clean_stderr(stderr)
        assert stored == expected, f"cycle {i}: stored {len(stored)} bytes"
        if kind == "unclosed":
            assert "ResourceWarning" in stderr, stderr
