"""`python -m shovel demo` in its short form: the naive patterns lose what the demonstration
says they lose, shovel's runner loses nothing in any cell (over a NATS JetStream stream too),
and every count is checked against the files the runs left behind."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shovel.demo import cli
from shovel.demo.accounting import Tally
from shovel.demo.natsfeed import msg_id, payload
from shovel.demo.natsserver import HOW_TO_GET
from shovel.demo.progress import PROGRESS_FILE, read_progress
from shovel.demo.pyclient import RECORDS_FILE, STORE_DIR
from shovel.demo.report import summarize
from shovel.demo.runs import RUNS_DIR, Cell, DemoConfig, RunResult, Runs
from shovel.sources import generated_record
from tests.helpers import committed, generated, read_checkpoint, stored_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One run per cell; a write latency long enough that a write is always in flight (a write
# starts every 10 ms and takes 100 to 300 ms), so a stop that cancels the client's tasks
# cannot miss one.
# The NATS cells' streams hold 20,000 messages each (the dev extra installs nats-server).
SHORT = [
    *("--runs", "1", "--rate", "2000", "--latency-ms", "200", "--jobs", "2"),
    *("--nats-messages", "20000"),
]
GENERATOR_CELLS = 12
NATS_CELLS = ("cancel-all.native.nats", "shovel.native.nats")


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
        "shovel.native.nats",
    }
    for cell in shovel_cells:
        for run in cell["runs"]:
            t = run["tally"]
            assert (t["lost"], t["duplicated"]) == (0, 0), (cell["key"], t)
            assert run["exit_codes"][-1] == 0, (cell["key"], run)
            assert not run["hung"], (cell["key"], run)
            assert t["read"] > 0
            directory = out / RUNS_DIR / cell["key"] / str(run["run"])
            # Byte for byte: exactly records 0..read-1, each once.
            if cell["source"] == "nats":
                _assert_stored_messages(directory, t["read"])
            elif cell["client"] == "native":
                assert stored_bytes(directory) == generated(0, t["read"])
                assert committed(directory) == t["read"]
            else:
                # The writes finish out of order (each draws its latency): compare in order.
                lines = (directory / STORE_DIR / RECORDS_FILE).read_bytes().splitlines(True)
                in_order: list[bytes] = sorted(lines, key=_seq)
                assert b"".join(in_order) == generated(0, t["read"])


def _assert_stored_messages(directory: Path, read: int) -> None:
    """The store holds stream messages 1..read, in order, each once, each exactly as it was
    published (one publisher, in order: stream sequence n is the n-th message)."""
    bodies = [json.loads(line) for line in stored_bytes(directory).splitlines()]
    assert [b["seq"] for b in bodies] == list(range(1, read + 1))
    for b in bodies:
        assert b["id"] == msg_id(b["seq"])
        assert base64.b64decode(b["data"]) == payload(b["seq"])


def test_over_nats_shovel_acknowledges_exactly_what_it_stored(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    """The server agrees: every message shovel read is stored and acknowledged, none is left
    pending an acknowledgement, and the rest of the stream is still delivered."""
    _, results, _ = short_demo
    for run in _cells(results)["shovel.native.nats"]["runs"]:
        n = run["nats"]
        assert n["read"] > 0
        assert n["stored"] == n["read"] == n["acked"] == n["ack_floor"], n
        assert (n["lost"], n["doubled"], n["stored_unacked"], n["read_returned"]) == (0, 0, 0, 0)
        assert n["deliverable_complete"], n
        assert n["deliverable"] == n["published"] - n["read"], n


def test_the_nats_accounting_agrees_with_the_server(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    """In both NATS cells, whatever they did: the server's count of acknowledged messages is
    exactly what it no longer delivers, and every stored line is a published message."""
    _, results, _ = short_demo
    cells = _cells(results)
    for key in NATS_CELLS:
        for run in cells[key]["runs"]:
            n, t = run["nats"], run["tally"]
            assert run["problem"] is None, (key, run["problem"])
            assert n["deliverable_complete"], (key, n)
            assert n["acked"] == n["published"] - n["deliverable"], (key, n)
            assert (t["unread"], t["invalid"]) == (0, 0), (key, t)
            assert n["published"] == 20000
            assert run["acked_timeline"], key


def test_without_a_nats_server_the_nats_cells_are_left_out_with_a_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "find_binary", lambda: None)
    config = DemoConfig(1, 1000.0, 0.0, 1, tmp_path, 1, nats_messages=100)
    server, note = cli._start_nats(config)
    assert server is None
    assert note is not None
    assert HOW_TO_GET in note
    assert "left out" in note


def _seq(line: bytes) -> int:
    """The sequence number at the head of a stored line (-1 when it has none)."""
    head = line.split(b",", 1)[0].removeprefix(b'{"seq":')
    return int(head) if head.isdigit() else -1


def _recount(directory: Path, client: str, read: int) -> dict[str, int]:
    """The run's tally, counted here from its files without the demo's own counting: the
    store's bytes (the native client's only as far as its checkpoint makes durable), each line
    checked against the generator's record for its sequence number."""
    if client == "python":
        path = directory / STORE_DIR / RECORDS_FILE
        data = path.read_bytes() if path.exists() else b""
    else:
        checkpoint = read_checkpoint(directory)
        data = stored_bytes(directory)[: checkpoint.bytes if checkpoint else 0]
    lines = data.splitlines(True)
    records = [line for line in lines if _seq(line) >= 0 and line == generated_record(_seq(line))]
    seqs = {_seq(line) for line in records}
    return {
        "read": read,
        "stored": len(records),
        "distinct": len(seqs),
        "lost": len(set(range(read)) - seqs),
        "duplicated": len(records) - len(seqs),
        "unread": len({s for s in seqs if s >= read}),
        "invalid": len(lines) - len(records),
    }


def test_every_count_adds_up_and_matches_the_files(
    short_demo: tuple[Path, dict[str, Any], str],
) -> None:
    out, results, _ = short_demo
    assert len(results["cells"]) == GENERATOR_CELLS + len(NATS_CELLS)
    for cell in results["cells"]:
        if cell["source"] == "nats":
            # Counted against the server (above).
            continue
        for run in cell["runs"]:
            directory = out / RUNS_DIR / cell["key"] / str(run["run"])
            progress = read_progress(directory / PROGRESS_FILE)
            assert progress is not None
            t = run["tally"]
            assert t == _recount(directory, cell["client"], progress.read_end), cell["key"]
            assert (t["unread"], t["invalid"]) == (0, 0), cell["key"]
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
    # The main table (a row per cell), then the NATS cells' server-side figures.
    assert len(rows) == 1 + GENERATOR_CELLS + len(NATS_CELLS) + 1 + len(NATS_CELLS)
    assert results["settings"]["nats_messages_per_run"] == 20000
    assert (out / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "timeline.png").stat().st_size > 10_000


def test_help_explains_the_flags_and_bad_flags_exit_2(tmp_path: Path) -> None:
    done = _demo(["--help"])
    assert done.returncode == 0
    flags = ("--runs", "--rate", "--latency-ms", "--seed", "--output-dir", "--jobs")
    for flag in (*flags, "--nats-messages"):
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


def _clean_run(cell: Cell, run: int = 0) -> RunResult:
    """A run that kept every record it read and exited 0 soon after its signal."""
    return RunResult(
        cell.key,
        run,
        1.0,
        cell.signal.name,
        exit_codes=[0],
        stop_to_exit_s=0.1,
        tally=Tally(read=10, stored=10, distinct=10, lost=0, duplicated=0, unread=0, invalid=0),
        timeline=[(-0.1, 5, 5), (0.0, 10, 8), (0.1, 10, 10)],
    )


def _demo_with_runs(
    monkeypatch: pytest.MonkeyPatch, out: Path, shovel_run: RunResult | None = None
) -> int:
    """cli._run over made-up runs (every cell's clean; shovel's native cell's `shovel_run`)."""

    def run_all(
        _runs: Runs, cells: list[Cell], done: Callable[[RunResult], None]
    ) -> dict[str, list[RunResult]]:
        results = {cell.key: [_clean_run(cell)] for cell in cells}
        if shovel_run is not None:
            results[shovel_run.cell] = [shovel_run]
        for runs in results.values():
            done(runs[0])
        return results

    monkeypatch.setattr(Runs, "run_all", run_all)
    out.mkdir()
    return cli._run(DemoConfig(1, 1000.0, 10.0, 1, out, 1), False, None, None)


def test_without_matplotlib_the_demo_says_how_to_get_the_picture(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # matplotlib cannot be imported in this process from here on.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "shovel-demo"
    assert _demo_with_runs(monkeypatch, out) == 0
    printed = capsys.readouterr()
    assert "no picture: matplotlib is not installed; pip install 'shovel[demo]'" in printed.err
    assert not (out / cli.PICTURE_FILE).exists()
    assert json.loads((out / cli.RESULTS_FILE).read_text())["cells"]
    assert "| shovel" in printed.out


SHOVEL_NATIVE = Cell("shovel", "native")


@pytest.mark.parametrize(
    "failed",
    [
        replace(_clean_run(SHOVEL_NATIVE), tally=Tally(10, 9, 9, 1, 0, 0, 0)),
        replace(_clean_run(SHOVEL_NATIVE), tally=Tally(10, 11, 10, 0, 1, 0, 0)),
        replace(_clean_run(SHOVEL_NATIVE), hung=True, exit_codes=[-9]),
        replace(_clean_run(SHOVEL_NATIVE), exit_codes=[1]),
        replace(_clean_run(SHOVEL_NATIVE), tally=Tally(10, 10, 10, 0, 0, 0, 1)),
        replace(_clean_run(SHOVEL_NATIVE), problem="the child read nothing in 30s"),
    ],
    ids=["lost", "doubled", "hung", "exit-1", "invalid-line", "problem"],
)
def test_shovels_cell_failing_in_any_way_makes_the_demo_exit_1(
    failed: RunResult,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert summarize([_clean_run(SHOVEL_NATIVE)]).clean
    assert not summarize([_clean_run(SHOVEL_NATIVE, 1), failed]).clean
    assert _demo_with_runs(monkeypatch, tmp_path / "shovel-demo", failed) == 1
    assert "did not keep every record in: shovel.native\n" in capsys.readouterr().err


def test_a_run_that_fails_is_reported_and_the_finished_runs_are_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def measure(_runs: Runs, _cell: Cell, _dir: Path, result: RunResult) -> None:
        if result.run == 1:
            raise RuntimeError("no such thing")
        result.exit_codes.append(0)
        result.tally = Tally(10, 10, 10, 0, 0, 0, 0)

    monkeypatch.setattr(Runs, "_one_generator", measure)
    config = DemoConfig(3, 1000.0, 0.0, 1, tmp_path, 2)
    results = Runs(config).run_all([Cell("shovel", "native")], lambda _r: None)
    runs = results["shovel.native"]
    assert [(r.run, r.problem) for r in runs] == [
        (0, None),
        (1, "the run failed: RuntimeError('no such thing')"),
        (2, None),
    ]
    assert summarize([runs[0], runs[2]]).clean
    assert not summarize(runs).clean
