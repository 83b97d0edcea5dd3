"""The wheel works outside the source tree: build it, install it in a fresh venv, run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import generated, run_shovel, stored_bytes

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_and_runs_from_another_directory(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which(
        "maturin"
    )
    if maturin is None:
        pytest.fail("maturin is needed to build the wheel (it is a dev dependency)")
    dist = tmp_path / "dist"
    subprocess.run(
        [maturin, "build", "--release", "--out", str(dist), "--interpreter", sys.executable],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wheels = list(dist.glob("shovel-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheels[0])],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed package must not be the source tree's.
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import shovel, shovel._native as n; print(shovel.__file__, n.FAULT_INJECTION)",
        ],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    ).stdout
    assert str(venv) in where, where
    assert where.split()[-1] == "False", "a release wheel must not carry fault-injection hooks"
    code, text = run_shovel(
        ["--source", "generate:500", "--generate-rate", "0", "--metrics-port", "0"],
        tmp_path / "log",
        cwd=elsewhere,
        python=str(python),
    )
    assert code == 0, text
    assert stored_bytes(elsewhere / "shovel-data") == generated(0, 500)
