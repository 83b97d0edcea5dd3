"""Checks of the real container image, run with rootful podman.

The image (localhost/shovel:test, or $SHOVEL_IMAGE) is built from the repository's Dockerfile by
deploy/container/setup.sh; `make container-test` runs both. What is checked is what the
Dockerfile and deploy/ promise: PID 1 is `python -m shovel` as uid 10001 with its stop-signal
handlers; `podman stop` is a graceful stop (exit 0, a summary, well within the timeout) and the
next run resumes; a SIGKILL at a random moment loses nothing; the Kubernetes securityContext
(read-only root, no capabilities, no new privileges) works; a drain that misses its deadline
exits 3 and counts what it left undelivered; the HEALTHCHECK reports healthy.

Every wait polls a condition with a deadline. Containers, volumes and mounts are removed at
teardown. Needs root (rootful podman); skipped, saying so, otherwise. Anything else missing
(podman, the image) is a failure. SHOVEL_CT_SEED replays the random kill point of a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from shovel._native import read_checkpoint

IMAGE = os.environ.get("SHOVEL_IMAGE", "localhost/shovel:test")
SHOVEL_UID = 10001
REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kubernetes" / "shovel.yaml"
SIGINT, SIGTERM = 2, 15
# podman kill's default signal; a container killed by it exits 128 + 9.
EXIT_SIGKILL = 137
EXIT_UNDELIVERED = 3
# `podman stop -t 10` must return this much before its own SIGKILL would.
STOP_LIMIT_S = 8.0

if os.geteuid() != 0:
    # The one case where the checks cannot run at all: skipped as a whole, in one line.
    pytest.skip("not root: rootful podman (and the loop device) need root", allow_module_level=True)

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    """Polls `check` until it returns something other than None; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.02)


def run(*cmd: str | Path, timeout_s: float = 120.0) -> str:
    """Runs a host command; its stdout, or an AssertionError with its stderr."""
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))}: exit {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def podman(*args: str | Path, timeout_s: float = 120.0) -> str:
    """Runs `podman ARGS`; its stdout (stripped)."""
    return run("podman", *args, timeout_s=timeout_s).strip()


def committed_offset(data_dir: Path) -> int | None:
    """The committed offset in DATA_DIR's checkpoint, or None while there is no checkpoint."""
    checkpoint = read_checkpoint(data_dir)
    return checkpoint.committed_offset if checkpoint else None


def stored_bytes(data_dir: Path) -> bytes:
    """The stored byte stream: the segments concatenated in name order (docs/faults.md)."""
    return b"".join(p.read_bytes() for p in sorted((data_dir / "segments").glob("*.seg")))


def first_difference(a: bytes, b: bytes) -> int:
    """The index of the first byte where `a` and `b` differ (the shorter length if one is a
    prefix of the other)."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def sig_caught(status: str, signum: int) -> bool:
    """Whether /proc/PID/status text says `signum` has a handler (SigCgt bit signum - 1)."""
    found = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    assert found is not None, status
    return bool(int(found.group(1), 16) >> (signum - 1) & 1)


def status_field(status: str, name: str) -> str:
    """A field of /proc/PID/status text."""
    found = re.search(rf"^{name}:\s*(.*)$", status, re.MULTILINE)
    assert found is not None, f"no {name} in {status}"
    return found.group(1).strip()


class Pod:
    """Containers and volumes of one test, all removed at teardown."""

    def __init__(self, test: str) -> None:
        self.prefix = f"shovel-ct-{re.sub(r'[^a-z0-9]+', '-', test.lower())[:30]}-"
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def _name(self) -> str:
        return self.prefix + uuid.uuid4().hex[:8]

    def volume(self) -> str:
        """A new named volume."""
        name = self._name()
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def mountpoint(self, volume: str) -> Path:
        """Where a named volume's files are on the host."""
        return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume))

    def start(self, *options: str, env: dict[str, str] | None = None) -> str:
        """`podman run -d OPTIONS -e ENV... IMAGE`: the container's name."""
        name = self._name()
        self.containers.append(name)
        envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
        podman("run", "--detach", f"--name={name}", *options, *envs, IMAGE)
        return name

    def logs(self, name: str) -> str:
        """Everything the container wrote (shovel logs to stderr)."""
        done = subprocess.run(
            ["podman", "logs", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=60,
            check=True,
        )
        return done.stdout

    def state(self, name: str) -> str:
        """created, running, exited, ..."""
        return podman("inspect", "--format", "{{.State.Status}}", name)

    def exit_code(self, name: str) -> int:
        """The exit code of an exited container."""
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", name))

    def wait_log(self, name: str, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """Waits for a log line matching `pattern`; fails at once if the container exits
        without having logged it."""

        def look() -> re.Match[str] | None:
            # The state first: a line logged just before the exit is in the logs read after.
            exited = self.state(name) not in ("created", "running")
            found = re.search(pattern, self.logs(name), re.MULTILINE)
            if found is None and exited:
                raise AssertionError(
                    f"{name} exited ({self.exit_code(name)}) without logging /{pattern}/:\n"
                    + self.logs(name)
                )
            return found

        return wait_until(f"/{pattern}/ in the log of {name}", look, timeout_s)

    def wait_exit(self, name: str, timeout_s: float = 60.0) -> int:
        """Waits for the container to exit; its exit code."""
        return int(podman("wait", name, timeout_s=timeout_s).splitlines()[-1])

    def proc_status(self, name: str) -> str:
        """/proc/1/status inside the container."""
        return podman("exec", name, "cat", "/proc/1/status")

    def cleanup(self) -> None:
        """Removes every container (killing it at once) with its anonymous /data volume, and
        every named volume; idempotent."""
        for name in self.containers:
            subprocess.run(
                ["podman", "rm", "--force", "--volumes", "--time=0", name],
                capture_output=True,
                timeout=60,
                check=False,
            )
        self.containers.clear()
        for name in self.volumes:
            subprocess.run(
                ["podman", "volume", "rm", "--force", name],
                capture_output=True,
                timeout=60,
                check=False,
            )
        self.volumes.clear()


@pytest.fixture(scope="session")
def image() -> str:
    """The image under test; fails (not skips) when podman or the image is missing."""
    assert shutil.which("podman"), "podman is not installed: run deploy/container/setup.sh"
    done = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, check=False)
    assert done.returncode == 0, f"no image {IMAGE}: run deploy/container/setup.sh"
    return IMAGE


@pytest.fixture
def pod(image: str, request: pytest.FixtureRequest) -> Iterator[Pod]:
    """A Pod for this test; everything it made is removed afterwards."""
    p = Pod(request.node.name)
    try:
        yield p
    finally:
        p.cleanup()


def data_dir(path: Path) -> Path:
    """A host directory the container's user can write, for a bind mount at /data."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, SHOVEL_UID, SHOVEL_UID)
    path.chmod(0o755)
    return path


def test_image_holds_the_current_source(pod: Pod) -> None:
    """The Python files installed in the image are the repository's (the shovel image is
    always rebuilt: a stale layer would ship an old wheel, see CONTAINER.md)."""
    ours = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in REPO.glob("shovel/*.py")}
    listing = podman(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=python",
        IMAGE,
        "-c",
        "import hashlib, pathlib, shovel\n"
        "for p in sorted(pathlib.Path(shovel.__file__).parent.glob('*.py')):\n"
        "    print(p.name, hashlib.sha256(p.read_bytes()).hexdigest())",
    )
    theirs = dict(line.split() for line in listing.splitlines())
    assert theirs == ours, "the image does not hold the current shovel/*.py: rebuild it"


def test_pid1_is_shovel_as_uid_10001_catching_stop_signals(pod: Pod) -> None:
    name = pod.start(env={"SHOVEL_SOURCE": "generate"})
    pod.wait_log(name, r"shovel started")
    cmdline = podman("exec", name, "cat", "/proc/1/cmdline")
    assert cmdline.rstrip("\0").split("\0") == ["python", "-m", "shovel"], repr(cmdline)
    status = pod.proc_status(name)
    assert status_field(status, "Uid").split() == [str(SHOVEL_UID)] * 4
    assert status_field(status, "Gid").split() == [str(SHOVEL_UID)] * 4
    assert sig_caught(status, SIGTERM), status_field(status, "SigCgt")
    assert sig_caught(status, SIGINT), status_field(status, "SigCgt")
    # The same process seen from the host: its innermost PID is 1 (no init wrapper).
    host_pid = podman("inspect", "--format", "{{.State.Pid}}", name)
    host_status = Path(f"/proc/{host_pid}/status").read_text()
    assert status_field(host_status, "NSpid").split()[-1] == "1"


def test_stop_is_graceful_and_the_next_run_resumes(
    pod: Pod, record_property: Callable[[str, object], None]
) -> None:
    volume = pod.volume()
    first = pod.start(f"--volume={volume}:/data", env={"SHOVEL_SOURCE": "generate"})
    data = pod.mountpoint(volume)
    wait_until("a first commit", lambda: committed_offset(data) or None)

    started = time.monotonic()
    podman("stop", "--time=10", first, timeout_s=30)
    took = time.monotonic() - started
    record_property("stop_s", f"{took:.2f}")
    logs = pod.logs(first)
    assert pod.exit_code(first) == 0, logs
    assert re.search(r"summary:.*undelivered 0$", logs, re.MULTILINE), logs
    assert took < STOP_LIMIT_S, f"podman stop took {took:.1f}s:\n{logs}"
    offset = committed_offset(data)
    assert offset, f"nothing committed: {logs}"

    second = pod.start(f"--volume={volume}:/data", env={"SHOVEL_SOURCE": "generate"})
    pod.wait_log(second, rf"shovel started: .*resuming at offset {offset}\b")
    podman("stop", "--time=10", second, timeout_s=30)
    assert pod.exit_code(second) == 0, pod.logs(second)


def make_input(path: Path, rng: random.Random, lines: int = 200_000) -> bytes:
    """`lines` records of varied length and content (any byte but the newline; some empty)."""
    out = bytearray()
    for _ in range(lines):
        n = rng.choice((0, 1, 7, rng.randrange(200)))
        out += rng.randbytes(n).replace(b"\n", b"\xff") + b"\n"
    path.write_bytes(out)
    path.chmod(0o644)
    return bytes(out)


def test_sigkill_at_a_random_moment_then_finishing_stores_the_input_exactly(
    pod: Pod, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    seed = int(os.environ.get("SHOVEL_CT_SEED", str(random.SystemRandom().randrange(2**32))))
    record_property("seed", seed)
    rng = random.Random(seed)
    inputs = tmp_path / "in"
    inputs.mkdir(mode=0o755)
    expected = make_input(inputs / "in.txt", rng)
    data = data_dir(tmp_path / "data")
    mounts = (f"--volume={inputs}:/in:ro", f"--volume={data}:/data")
    # Small reads, commits and writes in flight: about a hundred fsynced commits, so that the
    # run lasts a few seconds and a kill lands while there is work both done and to do.
    slow = {
        "SHOVEL_READ_CHUNK_BYTES": "65536",
        "SHOVEL_FSYNC_MAX_BYTES": "65536",
        "SHOVEL_MAX_INFLIGHT_BYTES": "65536",
        "SHOVEL_QUEUE_MAX_BATCHES": "1",
    }
    fraction = rng.uniform(0.1, 0.7)
    kill_at = int(len(expected) * fraction)
    record_property("kill_after_byte", f"{kill_at} of {len(expected)}")

    def passed_kill_point() -> bool | None:
        offset = committed_offset(data) or 0
        if offset >= len(expected):
            raise AssertionError(f"the run finished before the kill point (seed {seed})")
        return True if offset >= kill_at else None

    first = pod.start(*mounts, env={"SHOVEL_SOURCE": "/in/in.txt", **slow})
    wait_until(f"the committed offset to pass {kill_at} (seed {seed})", passed_kill_point)
    podman("kill", first)  # SIGKILL
    assert pod.wait_exit(first) == EXIT_SIGKILL
    logs = pod.logs(first)
    # The kill landed mid-work: no stop sequence ran, and part of the input is not committed.
    assert "summary:" not in logs, f"the run had finished before the kill (seed {seed}):\n{logs}"
    offset = committed_offset(data)
    assert offset is not None
    assert kill_at <= offset < len(expected), f"seed {seed}: {offset} / {len(expected)}"
    record_property("committed_at_kill", offset)
    # Informational: what was written past the checkpoint, for recovery to discard.
    checkpoint = read_checkpoint(data)
    assert checkpoint is not None
    record_property("written_past_checkpoint", len(stored_bytes(data)) - checkpoint.bytes)

    second = pod.start(*mounts, env={"SHOVEL_SOURCE": "/in/in.txt"})
    assert pod.wait_exit(second) == 0, pod.logs(second)
    logs = pod.logs(second)
    assert re.search(rf"resuming at offset {offset}\b", logs), logs
    assert re.search(r"summary:.*undelivered 0$", logs, re.MULTILINE), logs
    stored = stored_bytes(data)
    assert stored == expected, (
        f"seed {seed}: stored {len(stored)} bytes, input {len(expected)}; first difference at "
        f"{first_difference(stored, expected)}"
    )


def manifest_env() -> dict[str, str]:
    """The container's env in deploy/kubernetes/shovel.yaml (`- name: X` / `value: Y` pairs;
    the file is read as text: the project's .venv has no YAML parser)."""
    pairs = re.findall(
        r"^\s*- name: (SHOVEL_\w+)\n\s*value: \"?([^\"\n]*)\"?$", MANIFEST.read_text(), re.MULTILINE
    )
    assert pairs, f"no SHOVEL_* env in {MANIFEST}"
    return dict(pairs)


def manifest_value(key: str) -> str:
    """The first `key: value` in the manifest."""
    found = re.search(rf"^\s*{key}: (.+)$", MANIFEST.read_text(), re.MULTILINE)
    assert found is not None, f"no {key} in {MANIFEST}"
    return found.group(1).strip()


def test_runs_and_stops_as_the_kubernetes_manifest_configures_it(pod: Pod) -> None:
    # What the manifest asks for, and the podman flag for each (asserted, so that a changed
    # manifest makes this test change too).
    assert manifest_value("runAsUser") == str(SHOVEL_UID)
    assert manifest_value("runAsGroup") == str(SHOVEL_UID)
    assert manifest_value("readOnlyRootFilesystem") == "true"
    assert manifest_value("allowPrivilegeEscalation") == "false"
    assert manifest_value("drop") == '["ALL"]'
    assert manifest_value("mountPath") == "/data"
    grace_s = manifest_value("terminationGracePeriodSeconds")
    env = manifest_env()
    assert env["SHOVEL_GRACE_PERIOD_S"] == grace_s
    # The manifest reads a NATS cluster that this test does not run: the generator stands in.
    assert env["SHOVEL_SOURCE"].startswith("nats://")
    env["SHOVEL_SOURCE"] = "generate"

    volume = pod.volume()
    name = pod.start(
        "--read-only",
        "--tmpfs=/tmp:size=64m",
        "--cap-drop=ALL",
        f"--user={SHOVEL_UID}:{SHOVEL_UID}",
        "--security-opt=no-new-privileges",
        f"--volume={volume}:/data",
        env=env,
    )
    pod.wait_log(name, r"shovel started")
    data = pod.mountpoint(volume)
    wait_until("a first commit", lambda: committed_offset(data) or None)
    status = pod.proc_status(name)
    assert int(status_field(status, "CapEff"), 16) == 0
    assert int(status_field(status, "CapBnd"), 16) == 0
    assert status_field(status, "NoNewPrivs") == "1"
    probe = subprocess.run(
        ["podman", "exec", name, "touch", "/probe"], capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0, "the root filesystem is writable"
    assert "Read-only file system" in probe.stderr, probe.stderr
    podman("exec", name, "touch", "/tmp/probe")  # the tmpfs is the scratch space

    started = time.monotonic()
    podman("stop", f"--time={grace_s}", name, timeout_s=float(grace_s) + 30)
    took = time.monotonic() - started
    logs = pod.logs(name)
    assert pod.exit_code(name) == 0, logs
    assert re.search(r"summary:.*undelivered 0$", logs, re.MULTILINE), logs
    assert took < STOP_LIMIT_S, f"stop took {took:.1f}s:\n{logs}"


class FreezableFs:
    """ext4 on a loop device, mounted on the host; `fsfreeze` makes every write to it block
    until thawed: storage that is stuck, by construction rather than by timing."""

    def __init__(self, root: Path) -> None:
        self.image = root / "fs.img"
        self.mnt = root / "mnt"
        self.loop: str | None = None
        self.frozen = False

    def setup(self) -> None:
        with self.image.open("wb") as f:
            f.truncate(256 << 20)
        run("mkfs.ext4", "-q", "-F", self.image)
        self.loop = run("losetup", "--find", "--show", self.image).strip()
        self.mnt.mkdir()
        run("mount", "-t", "ext4", self.loop, self.mnt)
        data_dir(self.mnt)

    def freeze(self) -> None:
        run("fsfreeze", "--freeze", self.mnt)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            run("fsfreeze", "--unfreeze", self.mnt)
            self.frozen = False

    def teardown(self) -> None:
        if os.path.ismount(self.mnt):
            run("umount", self.mnt)
        if self.loop is not None:
            run("losetup", "--detach", self.loop)


@pytest.fixture
def freezable(pod: Pod, tmp_path: Path) -> Iterator[FreezableFs]:
    """A FreezableFs; at teardown: thawed first (a frozen process cannot be removed), then the
    containers removed, then unmounted."""
    for tool in ("losetup", "mkfs.ext4", "fsfreeze"):
        assert shutil.which(tool), f"{tool} is missing: run deploy/container/setup.sh"
    fs = FreezableFs(tmp_path)
    try:
        fs.setup()
        yield fs
    finally:
        fs.thaw()
        pod.cleanup()
        fs.teardown()


def test_a_missed_deadline_exits_3_and_logs_the_undelivered_count(
    pod: Pod, freezable: FreezableFs, record_property: Callable[[str, object], None]
) -> None:
    """The release wheel has no fault injection, so storage is made stuck from outside: /data
    is a filesystem frozen with fsfreeze. A backlog with a tiny timeout only makes a miss
    likely (storage may have caught up with the reader at the moment of the signal); with the
    filesystem frozen, nothing read after the freeze can become durable, by construction."""
    # The image's defaults (a 10 s grace period) allow a deadline this short.
    env = {
        "SHOVEL_SOURCE": "generate",
        "SHOVEL_SHUTDOWN_TIMEOUT_S": "1",
        "SHOVEL_STATUS_INTERVAL_S": "0.2",
    }
    name = pod.start(f"--volume={freezable.mnt}:/data", env=env)
    wait_until("a first commit", lambda: committed_offset(freezable.mnt) or None)
    freezable.freeze()

    # Evidence of a backlog before the signal: a status line written after the freeze (the
    # second one after it; the first may have been formatted before) with more read than stored.
    # Nothing read after the freeze can become durable before the thaw.
    status = r"^.* status: read (\d+) records, stored (\d+),"
    seen = len(re.findall(status, pod.logs(name), re.MULTILINE))

    def backlog() -> tuple[int, int] | None:
        lines = re.findall(status, pod.logs(name), re.MULTILINE)
        if len(lines) < seen + 2:
            return None
        read, stored = map(int, lines[-1])
        return (read, stored) if read > stored else None

    read, stored = wait_until("a status line showing records read and not stored", backlog)
    record_property("backlog_at_signal", read - stored)

    podman("kill", "--signal=TERM", name)
    found = pod.wait_log(name, r"summary: .*undelivered (\d+)$", timeout_s=30)
    undelivered = int(found.group(1))
    record_property("undelivered", undelivered)
    logs = pod.logs(name)
    assert undelivered > 0, logs
    assert re.search(
        rf"^.* {undelivered} records were read but are not durable", logs, re.MULTILINE
    ), logs
    # The writes stuck in the frozen filesystem hold the process until the thaw.
    freezable.thaw()
    assert pod.wait_exit(name) == EXIT_UNDELIVERED, pod.logs(name)


def test_healthcheck_reports_healthy_while_running(pod: Pod) -> None:
    test = podman("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE)
    assert "/healthz" in test, "the image has no HEALTHCHECK (built without --format docker?)"
    name = pod.start(env={"SHOVEL_SOURCE": "generate"})
    pod.wait_log(name, r"shovel started")

    def healthy() -> bool | None:
        done = subprocess.run(
            ["podman", "healthcheck", "run", name], capture_output=True, text=True, check=False
        )
        return True if done.returncode == 0 else None

    wait_until("podman healthcheck run to pass", healthy, timeout_s=30)
    assert podman("inspect", "--format", "{{.State.Health.Status}}", name) == "healthy"
    assert pod.state(name) == "running"
