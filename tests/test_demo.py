"""`python -m shovel demo` in its short form: the naive patterns lose what the demonstration
says they lose, shovel's runner loses nothing in any cell, and every count is checked against
the files the runs left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shovel.demo.accounting import checkpoint_numbers, tally
from shovel.demo.picture import have_matplotlib
from shovel.demo.progress import PROGRESS_FILE, read_progress
from shovel.demo.pyclient import RECORDS_FILE, STORE_DIR
from shovel.demo.report import accounting_holds
from shovel.demo.runs import RunResult
from tests.helpers import generated, stored_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One run per cell; a write latency long enough that a write is always in flight (a write
# starts every 10 ms and takes 100 to 300 ms), so a stop that cancels the client's tasks
# cannot miss one.
SHORT = ["--runs", "1", "--rate", "2000", "--latency-ms", "200", "--jobs", "2"]


def _demo(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shovel", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The output directory, results.json and stdout of one short demo."""
    out = tmp_path_factory.mktemp("demo") / "shovel-demo"
    done = _demo([*SHORT, "--output-dir", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "results.json").read_text()), done.stdout


def _cells(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cell["key"]: cell for cell in results["cells"]}


def test_cancelling_every_task_loses_the_python_clients_writes_in_flight(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    _, results, _ = short_demo
    for run in _cells(results)["cancel-all.python"]["runs"]:
        assert run["inflight_at_stop"] is True
        assert run["tally"]["lost"] > 0, run["tally"]
        assert run["exit_codes"] == [1]


def test_shovels_runner_loses_and_doubles_nothing_in_any_cell(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, _ = short_demo
    shovel_cells = [c for c in results["cells"] if c["pattern"] == "shovel"]
    assert {c["key"] for c in shovel_cells} == {
        "shovel.python",
        "shovel.native",
        "shovel.native.kill-restart",
    }
    for cell in shovel_cells:
        for run in cell["runs"]:
            t = run["tally"]
            assert (t["lost"], t["duplicated"]) == (0, 0), (cell["key"], t)
            assert run["exit_codes"][-1] == 0, (cell["key"], run)
            assert not run["hung"], (cell["key"], run)
            assert t["read"] > 0
            directory = out / "runs" / cell["key"] / str(run["run"])
            # Byte for byte: exactly records 0..read-1, each once.
            if cell["client"] == "native":
                assert stored_bytes(directory) == generated(0, t["read"])
                assert checkpoint_numbers(directory)["committed_offset"] == t["read"]
            else:
                # The writes finish out of order (each draws its latency): compare in order.
                lines = (directory / STORE_DIR / RECORDS_FILE).read_bytes().splitlines(True)
                in_order: list[bytes] = sorted(lines, key=_seq)
                assert b"".join(in_order) == generated(0, t["read"])


def _seq(line: bytes) -> int:
    return int(line.split(b",", 1)[0].removeprefix(b'{"seq":'))


def test_every_count_adds_up_and_matches_the_files(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, _ = short_demo
    assert len(results["cells"]) == 12
    for cell in results["cells"]:
        for run in cell["runs"]:
            directory = out / "runs" / cell["key"] / str(run["run"])
            progress = read_progress(directory / PROGRESS_FILE)
            assert progress is not None
            recounted = tally(directory, cell["client"], progress.read_end)
            t = run["tally"]
            assert t == {
                "read": recounted.read,
                "stored": recounted.stored,
                "distinct": recounted.distinct,
                "lost": recounted.lost,
                "duplicated": recounted.duplicated,
                "unread": recounted.unread,
                "invalid": recounted.invalid,
            }, cell["key"]
            assert t["read"] == t["stored"] + t["lost"] - t["duplicated"], cell["key"]
            assert (t["unread"], t["invalid"]) == (0, 0), cell["key"]
            assert accounting_holds(RunResult(cell["key"], 0, 0.0, "", tally=recounted))
            assert run["problem"] is None, (cell["key"], run["problem"])
            assert run["timeline"], cell["key"]


def test_the_naive_client_loses_writes_pending_at_a_sigkill_and_restart_skips_them(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    """Its checkpoint is what it accepted, saved every 100 ms; with writes taking 100 to
    300 ms, some it had accepted before its last save are still pending at the kill, and the
    restart resumes past them."""
    _, results, _ = short_demo
    for run in _cells(results)["no-handler.python.kill-restart"]["runs"]:
        assert run["exit_codes"] == [-9, 0]
        t = run["tally"]
        # The restart read the source to its end: 3.5 s of records at 2,000/s.
        assert t["read"] == 7000
        assert 0 < run["read_at_kill"] < t["read"]
        assert t["lost"] > 0, t


def test_the_table_json_and_picture_are_written(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, stdout = short_demo
    assert results["settings"]["python_client_latency_ms"] == 200
    assert "Python client write latency 200 ms" in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 12
    assert (out / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "timeline.png").stat().st_size > 10_000


def test_help_explains_the_flags_and_bad_flags_exit_2(tmp_path: Path) -> None:
    done = _demo(["--help"])
    assert done.returncode == 0
    for flag in ("--runs", "--rate", "--latency-ms", "--seed", "--output-dir", "--jobs"):
        assert flag in done.stdout
    assert "shovel[demo]" in done.stdout
    bad = _demo(["--runs", "0"])
    assert bad.returncode == 2
    assert "--runs" in bad.stderr
    # A directory that is not a demo's is left alone.
    (tmp_path / "precious.txt").write_text("keep me")
    refused = _demo(["--output-dir", str(tmp_path)])
    assert refused.returncode == 2
    assert "not a demo's" in refused.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_without_matplotlib_there_is_no_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    assert have_matplotlib()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not have_matplotlib()
