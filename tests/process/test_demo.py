"""`python -m shovel demo` in its short form: the naive patterns lose what the demonstration
says they lose, shovel's runner loses nothing in any cell (into and from a NATS JetStream
stream too), and every count is checked against the files the runs left behind. On a machine
kept busy the demo still counts everything (its waits are bounded by progress, not by time),
and a count that cannot be completed is shown as unknown, never as a loss."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from shovel.demo import cli, natsfeed, natstally, picture, report
from shovel.demo import runs as demo_runs
from shovel.demo.accounting import HELD_FILE, Tally, tally
from shovel.demo.natsfeed import CONSUMER, Deliverable, NatsFeed, ServerView, msg_id, payload
from shovel.demo.natsserver import HOW_TO_GET
from shovel.demo.natstally import nats_tally
from shovel.demo.progress import PROGRESS_FILE, read_progress
from shovel.demo.pyclient import RECORDS_FILE, STORE_DIR
from shovel.demo.report import summarize, table
from shovel.demo.runs import RUNS_DIR, Cell, DemoConfig, RunResult, Runs
from shovel.sources import generated_record
from tests.helpers import (
    WAIT_S,
    committed,
    generated,
    read_checkpoint,
    stored_bytes,
    wait_until,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One run per cell; a write latency long enough that a write is always in flight (a write
# starts every 10 ms and takes 100 to 300 ms), so a stop that cancels the client's tasks
# cannot miss one.
# The NATS cells' streams hold 20,000 messages each (the dev extra installs nats-server).
SHORT = [
    *("--runs", "1", "--rate", "2000", "--latency-ms", "200", "--jobs", "2"),
    *("--nats-messages", "20000"),
]
# Over the generator: into the output directory, and (SINK_CELLS) into a JetStream stream.
GENERATOR_CELLS = 16
SINK_CELLS = ("cancel-all.nats-py", "cancel-all.sink", "aiorun.nats-py", "shovel.sink")
NATS_CELLS = ("cancel-all.native.nats", "shovel.native.nats")
# On a busy machine: three runs at a time over streams of 40,000 messages (the default), which
# before the demo's waits were bounded by progress was enough for its drain of the NATS consumer
# to stop at its deadline and count what it had not reached yet as lost.
BUSY = [
    *("--runs", "2", "--rate", "2000", "--latency-ms", "200", "--jobs", "3"),
    *("--nats-messages", "40000"),
]
CPU_BURNERS = 2


def _demo(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shovel", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )


# A short demo's output directory, results.json, stdout and stderr.
ShortDemo = tuple[Path, dict[str, Any], str, str]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory: pytest.TempPathFactory) -> ShortDemo:
    """One short demo."""
    out = tmp_path_factory.mktemp("demo") / "shovel-demo"
    done = _demo([*SHORT, "--output-dir", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    return out, json.loads((out / "results.json").read_text()), done.stdout, done.stderr


def _cells(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cell["key"]: cell for cell in results["cells"]}


def test_cancelling_every_task_loses_the_python_clients_writes_in_flight(
    short_demo: ShortDemo,
) -> None:
    _, results, _, _ = short_demo
    for run in _cells(results)["cancel-all.python"]["runs"]:
        assert run["inflight_at_stop"] is True
        assert run["tally"]["lost"] > 0, run["tally"]
        assert run["exit_codes"] == [1]


def test_shovels_runner_loses_and_doubles_nothing_in_any_cell(
    short_demo: ShortDemo,
) -> None:
    out, results, _, _ = short_demo
    shovel_cells = [c for c in results["cells"] if c["pattern"] == "shovel"]
    assert {c["key"] for c in shovel_cells} == {
        "shovel.python",
        "shovel.native",
        "shovel.sink",
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
            elif cell["client"] == "sink":
                # The stream holds them in order: one message a record, as read.
                assert (directory / HELD_FILE).read_bytes() == generated(0, t["read"])
                assert run["held"]["messages"] == t["read"]
                assert "allow_atomic is off" not in (directory / "child.log").read_text()
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
    short_demo: ShortDemo,
) -> None:
    """The server agrees: every message shovel read is stored and acknowledged, none is left
    pending an acknowledgement, and the rest of the stream is still delivered."""
    _, results, _, _ = short_demo
    for run in _cells(results)["shovel.native.nats"]["runs"]:
        n = run["nats"]
        assert n["read"] > 0
        assert n["stored"] == n["read"] == n["acked"] == n["ack_floor"], n
        assert (n["lost"], n["doubled"], n["stored_unacked"], n["read_returned"]) == (0, 0, 0, 0)
        assert n["deliverable_complete"], n
        assert n["deliverable"] == n["published"] - n["read"], n


def test_over_nats_cancel_all_loses_nothing_and_exits_1_with_a_traceback(
    short_demo: ShortDemo,
) -> None:
    """The NATS client runs in the native module, out of cancel-all's reach, and the naive
    main's `finally` closes storage and then finishes the source: what was stored is
    acknowledged, what was read and not stored (the queue, cancelled) comes back, and the stop
    does not hang. What cancel-all still costs is the exit: 1, with a traceback."""
    _, results, _, _ = short_demo
    for run in _cells(results)["cancel-all.native.nats"]["runs"]:
        n = run["nats"]
        assert n["read"] > 0
        assert n["stored"] == n["acked"] == n["ack_floor"], n
        assert n["stored"] + n["read_returned"] == n["read"], n
        assert (n["lost"], n["doubled"], n["stored_unacked"]) == (0, 0, 0), n
        assert not run["hung"], run
        assert run["exit_codes"] == [1], run
        assert run["traceback"], run


def test_into_jetstream_cancel_all_keeps_in_order_what_reached_shovels_sink_and_exits_1(
    short_demo: ShortDemo,
) -> None:
    """The sink's publishes run in the native module, out of cancel-all's reach, and the naive
    main's `finally` closes it: the stream holds, in order and once each, every record handed
    to the sink (what sat in the queue at the signal is all it can lose). Exit 1, with a
    traceback."""
    out, results, _, _ = short_demo
    for run in _cells(results)["cancel-all.sink"]["runs"]:
        t = run["tally"]
        directory = out / RUNS_DIR / "cancel-all.sink" / str(run["run"])
        assert (directory / HELD_FILE).read_bytes() == generated(0, t["stored"])
        assert t["stored"] + t["lost"] == t["read"], t
        assert not run["hung"], run
        assert run["exit_codes"] == [1], run
        assert run["traceback"], run


def test_into_jetstream_the_classic_client_exits_as_its_stop_makes_it(
    short_demo: ShortDemo,
) -> None:
    """The classic client (nats-py, a task per record) under cancel-all exits 1 with a
    traceback, under aiorun 0; whatever it lost, the stream holds no record twice and none that
    was not read, and each stop came with its publishes in flight counted."""
    _, results, _, _ = short_demo
    for key, code in (("cancel-all.nats-py", 1), ("aiorun.nats-py", 0)):
        for run in _cells(results)[key]["runs"]:
            t = run["tally"]
            assert (t["duplicated"], t["unread"], t["invalid"]) == (0, 0, 0), (key, t)
            assert run["exit_codes"] == [code], (key, run)
            assert run["traceback"] == (code == 1), (key, run)
            assert run["writes_in_flight_at_stop"] is not None, (key, run)
            assert run["held"]["incomplete"] is None, (key, run)


def test_the_nats_accounting_agrees_with_the_server(
    short_demo: ShortDemo,
) -> None:
    """In both NATS cells, whatever they did: the server's count of acknowledged messages is
    exactly what it no longer delivers, and every stored line is a published message."""
    _, results, _, _ = short_demo
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


# In a process where nats-py cannot be imported: the demo's modules load, and the NATS cells are
# left out with a note (the note printed, or the error).
WITHOUT_NATS_PY = """
import sys
sys.modules["nats"] = None
from pathlib import Path
from shovel.demo import cli, child, picture, report, runs
config = runs.DemoConfig(1, 1000.0, 0.0, 1, Path(sys.argv[1]), 1, nats_messages=100)
server, note = cli._start_nats(config)
assert server is None
print(note)
"""


def test_without_nats_py_the_demo_runs_and_leaves_the_nats_cells_out_with_a_note(
    tmp_path: Path,
) -> None:
    """nats-py is the demo extra's, not shovel's: a plain install still runs the demo."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_NATS_PY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "nats-py is not installed, so the NATS cells were left out" in done.stdout
    assert "pip install 'shovel-pipeline[demo]'" in done.stdout


def _seq(line: bytes) -> int:
    """The sequence number at the head of a stored line (-1 when it has none)."""
    head = line.split(b",", 1)[0].removeprefix(b'{"seq":')
    return int(head) if head.isdigit() else -1


def _recount(directory: Path, client: str, read: int) -> dict[str, int]:
    """The run's tally, counted here from its files without the demo's own counting: the
    store's bytes (the native client's only as far as its checkpoint makes durable; a JetStream
    stream's as read back after the run), each line checked against the generator's record for
    its sequence number."""
    if client in ("python", "nats-py", "sink"):
        path = directory / STORE_DIR / RECORDS_FILE if client == "python" else directory / HELD_FILE
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
        # Every run of the short demo is counted to its end.
        "uncounted": 0,
    }


def test_every_count_adds_up_and_matches_the_files(
    short_demo: ShortDemo,
) -> None:
    out, results, _, _ = short_demo
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
    short_demo: ShortDemo,
) -> None:
    """Its checkpoint is what it accepted, saved every 100 ms; with writes taking 100 to
    300 ms, some it had accepted before its last save are still pending at the kill, and the
    restart resumes past them."""
    _, results, _, _ = short_demo
    for run in _cells(results)["no-handler.python.kill-restart"]["runs"]:
        assert run["exit_codes"] == [-9, 0]
        t = run["tally"]
        # The restart read the source to its end: 3.5 s of records at 2,000/s.
        assert t["read"] == 7000
        assert 0 < run["read_at_kill"] < t["read"]
        assert t["lost"] > 0, t


def _table_rows(text: str) -> list[list[str]]:
    """The rows of the Markdown tables in `text` (headers included, rules left out), as their
    cells' text."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ")
    ]


def _section(markdown: str, heading: str) -> str:
    """The text under `## heading`, to the next heading."""
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_stdout_is_a_narrow_headline_table_and_says_where_the_full_tables_are(
    short_demo: ShortDemo,
) -> None:
    out, results, stdout, _ = short_demo
    assert "Python client write latency 200 ms" in stdout
    # Narrow, but for the last line's paths (under pytest's long temporary directory).
    assert max(len(line) for line in stdout.splitlines()[:-1]) <= report.HEADLINE_WIDTH
    rows = _table_rows(stdout)
    # One table: a header and a row per cell, each saying what its cell's summary says.
    assert rows[0] == report.HEADLINE_HEADER
    assert len(rows) == 1 + GENERATOR_CELLS + len(NATS_CELLS)
    for cell, row in zip(results["cells"], rows[1:], strict=True):
        s = cell["summary"]
        assert row[2] == f"{s['losing']}/{s['runs']} runs", (cell["key"], row)
        assert row[3].split(";")[0] == report.figure(s["lost_mean"]), (cell["key"], row)
        assert ("stored twice" in row[3]) == (s["duplicated_max"] > 0), (cell["key"], row)
        codes = s["exit_codes"][0]
        exits = ", then ".join(report.exit_text(c, short=len(codes) > 1) for c in codes)
        assert row[4] == exits, (cell["key"], row)
    by_key = {cell["key"]: row for cell, row in zip(results["cells"], rows[1:], strict=True)}
    assert by_key["cancel-all.python"][2] == "1/1 runs"
    assert by_key["shovel.native"][2:] == ["0/1 runs", "0", "0"]
    assert by_key["shovel.sink"][2:] == ["0/1 runs", "0", "0"]
    assert by_key["cancel-all.sink"][4] == "1"
    assert by_key["no-handler.python"][4] == "killed (SIGTERM)"
    assert by_key["shovel.native.kill-restart"][4] == "killed, then 0"
    assert stdout.splitlines()[-1] == (
        f"The full tables: {out / cli.RESULTS_MD}; every figure: {out / cli.RESULTS_FILE}"
    )


def test_the_results_file_holds_the_headline_and_the_full_tables(
    short_demo: ShortDemo,
) -> None:
    out, results, stdout, _ = short_demo
    markdown = (out / cli.RESULTS_MD).read_text()
    # The headline, as printed.
    assert _table_rows(_section(markdown, "Records lost, per stop and client")) == _table_rows(
        stdout
    )
    # Every cell's figures, a row each, the headers saying what each column counts.
    full = _table_rows(_section(markdown, "Every figure, per cell"))
    assert full[0] == report.FULL_HEADER
    assert len(full) == 1 + GENERATOR_CELLS + len(NATS_CELLS)
    for cell, row in zip(results["cells"], full[1:], strict=True):
        s, figures = cell["summary"], dict(zip(report.FULL_HEADER, row, strict=True))
        assert figures["signal"] == cell["signal"]
        assert figures["read (mean)"] == f"{s['read_mean']:,.0f}"
        assert figures["stored, repeats included (mean)"] == f"{s['stored_mean']:,.0f}"
        assert figures["runs that lost records"] == f"{s['losing']}/{s['runs']}"
        assert figures["lost per run, mean (max)"] == (
            f"{report.figure(s['lost_mean'])} ({s['lost_max']:,})"
        )
    # The NATS cells by the server's figures.
    nats = _table_rows(_section(markdown, "The NATS cells, by the server's figures"))
    assert nats[0] == report.NATS_HEADER
    assert [row[0] for row in nats[1:]] == ["cancel all_tasks()", "shovel's runner"]
    for key, row in zip(NATS_CELLS, nats[1:], strict=True):
        n = _cells(results)[key]["runs"][0]["nats"]
        figures = dict(zip(report.NATS_HEADER, row, strict=True))
        assert figures["acknowledged (the server's count)"] == f"{n['acked']:,}"
        assert figures["lost: acknowledged, never stored"] == f"{n['lost']:,}"
    assert results["settings"]["nats_messages_per_run"] == 20000


def test_the_picture_is_written(short_demo: ShortDemo) -> None:
    out, _, _, stderr = short_demo
    assert (out / "timeline.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "timeline.png").stat().st_size > 10_000
    assert f"the picture: {out / cli.PICTURE_FILE}" in stderr


def test_a_line_on_stderr_says_what_each_cell_found_as_it_finishes(
    short_demo: ShortDemo,
) -> None:
    _, results, _, stderr = short_demo
    lines = [line for line in stderr.splitlines() if line.startswith("demo: [")]
    cells = results["cells"]
    assert len(lines) == len(cells)
    # Numbered in the order they finished; each cell once, with what its runs found.
    assert [line.split("]")[0] for line in lines] == [
        f"demo: [{n}/{len(cells)}" for n in range(1, len(cells) + 1)
    ]
    for cell in cells:
        stop, client = report.short_title(
            Cell(cell["pattern"], cell["client"], cell["kill_restart"], cell["source"])
        )
        mine = [line for line in lines if f"] {stop} \u00d7 {client}: " in line]
        assert len(mine) == 1, (cell["key"], lines)
        s = cell["summary"]
        assert f": {s['losing']} of 1 run lost records" in mine[0], mine[0]
        exits = ", then ".join(report.exit_text(c) for c in s["exit_codes"][0])
        assert f", exit {exits} \u2014 " in mine[0], mine[0]


def test_a_cells_runs_are_run_together_so_that_cells_finish_one_by_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With one run at a time, every run of the first cell is done before the second cell's
    first starts: its line comes after a fraction of the demo, not near its end."""
    started: list[tuple[str, int]] = []

    def measure(_runs: Runs, cell: Cell, _dir: Path, result: RunResult) -> None:
        started.append((cell.key, result.run))
        result.exit_codes.append(0)
        result.tally = Tally(10, 10, 10, 0, 0, 0, 0)

    monkeypatch.setattr(Runs, "_one_generator", measure)
    cells = [Cell("shovel", "native"), Cell("cancel-all", "python")]
    finished: list[tuple[str, int]] = []
    Runs(DemoConfig(3, 1000.0, 0.0, 1, tmp_path, 1)).run_all(
        cells, lambda r: finished.append((r.cell, r.run))
    )
    expected = [(cell.key, run) for cell in cells for run in range(3)]
    assert started == expected
    assert finished == expected


def test_help_explains_the_flags_and_bad_flags_exit_2(tmp_path: Path) -> None:
    done = _demo(["--help"])
    assert done.returncode == 0
    flags = ("--runs", "--rate", "--latency-ms", "--seed", "--output-dir", "--jobs", "--cells")
    for flag in (*flags, "--nats-messages"):
        assert flag in done.stdout
    text = " ".join(done.stdout.split())
    assert "pip install 'shovel-pipeline[demo]'" in text
    assert "shovel[demo]" not in text
    # What it prints and writes.
    assert "It prints a line per finished cell (stderr), then a short table (stdout)" in text
    for name in (cli.RESULTS_MD, cli.RESULTS_FILE, cli.PICTURE_FILE, f"{RUNS_DIR}/"):
        assert f"{name} (" in text
    # What it does when it cannot count.
    assert "When it cannot count, it says so." in text
    assert "What it could not count is shown as not counted, with why, never as lost." in text
    assert "3 nothing of shovel's runner failed, but the count of some of its runs" in text
    bad = _demo(["--runs", "0"])
    assert bad.returncode == 2
    assert "--runs" in bad.stderr
    # A directory that is not a demo's is left alone.
    (tmp_path / "precious.txt").write_text("keep me")
    refused = _demo(["--output-dir", str(tmp_path)])
    assert refused.returncode == 2
    assert "not a demo's" in refused.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_cells_runs_only_the_cells_it_names(tmp_path: Path) -> None:
    out = tmp_path / "shovel-demo"
    done = _demo(["--cells", "shovel.sink,no-such-*", "--runs", "1", "--output-dir", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert [cell["key"] for cell in results["cells"]] == ["shovel.sink"]
    run = results["cells"][0]["runs"][0]
    assert (run["tally"]["lost"], run["tally"]["duplicated"], run["exit_codes"]) == (0, 0, [0])
    none = _demo(["--cells", "no-such-*", "--output-dir", str(tmp_path / "none")])
    assert none.returncode == 2
    assert "--cells no-such-* names no cell" in none.stderr


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
    return cli._run(DemoConfig(1, 1000.0, 10.0, 1, out, 1), cli._cells(False), None, [])


def test_without_matplotlib_the_demo_says_how_to_get_the_picture(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # matplotlib cannot be imported in this process from here on.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "shovel-demo"
    assert _demo_with_runs(monkeypatch, out) == 0
    printed = capsys.readouterr()
    assert (
        "no picture: matplotlib is not installed; pip install 'shovel-pipeline[demo]'"
        in printed.err
    )
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
    # The demo's own measuring failed: the run is not counted, which is not a failure of the
    # pattern's either.
    assert [(r.run, r.count_incomplete) for r in runs] == [
        (0, None),
        (1, "the run could not be measured: RuntimeError('no such thing')"),
        (2, None),
    ]
    assert summarize([runs[0], runs[2]]).clean
    assert not summarize(runs).clean
    assert summarize(runs).unknown


def _cpu_s(pid: int) -> float:
    """CPU seconds a process has used (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


@pytest.fixture
def busy_machine() -> Iterator[list[subprocess.Popen[bytes]]]:
    """CPU_BURNERS processes spinning for the length of the test (as busy as the machine the
    demo first cried wolf on: load average 4 to 6 on two cores)."""
    burners: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(CPU_BURNERS):
            burners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        wait_until(lambda: all(_cpu_s(b.pid) > 0.2 for b in burners), what="burners burning")
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def test_on_a_busy_machine_shovels_runner_loses_and_doubles_nothing_and_the_demo_exits_0(
    busy_machine: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    out = tmp_path / "shovel-demo"
    done = _demo([*BUSY, "--output-dir", str(out)])
    # The machine was busy from the first run to the last.
    assert all(burner.poll() is None for burner in busy_machine)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "could not be completed" not in done.stderr
    results = json.loads((out / "results.json").read_text())
    for cell in results["cells"]:
        assert cell["summary"]["incomplete"] == 0, (cell["key"], cell["summary"])
        if cell["pattern"] != "shovel":
            continue
        for run in cell["runs"]:
            t = run["tally"]
            assert (t["lost"], t["duplicated"], t["uncounted"]) == (0, 0, 0), (cell["key"], t)
            assert run["exit_codes"][-1] == 0, (cell["key"], run)
            assert run["count_incomplete"] is None, (cell["key"], run)
    # The drain got to the end in both NATS cells, and the server agrees with it.
    for key in NATS_CELLS:
        for run in _cells(results)[key]["runs"]:
            n = run["nats"]
            assert (n["deliverable_complete"], n["uncounted"]) == (True, 0), (key, n)
            assert n["acked"] == n["published"] - n["deliverable"], (key, n)
    for run in _cells(results)["shovel.native.nats"]["runs"]:
        n = run["nats"]
        assert n["lost"] == 0, n
        assert n["stored"] == n["read"] == n["acked"], n


def _python_store(directory: Path, seqs: Iterator[int] | range | list[int]) -> None:
    """A Python client's store holding the generator's records `seqs`."""
    store = directory / STORE_DIR
    store.mkdir(parents=True)
    (store / RECORDS_FILE).write_bytes(b"".join(generated_record(seq) for seq in seqs))


def test_a_count_cut_short_by_a_killed_restart_is_uncounted_past_the_checkpoint(
    tmp_path: Path,
) -> None:
    """Records a later restart would read again (from the checkpoint on) are not lost; those
    before it, never stored, are."""
    _python_store(tmp_path, [*range(50), *range(60, 70)])
    assert tally(tmp_path, "python", 100) == Tally(100, 60, 60, 40, 0, 0, 0)
    cut_short = tally(tmp_path, "python", 100, resume_at=55)
    assert (cut_short.lost, cut_short.uncounted) == (5, 35)
    assert cut_short.read == cut_short.distinct + cut_short.lost + cut_short.uncounted


# A restart that reads 30 records, one every 50 ms (1.5 s in all), then exits.
SLOW_RESTART = """
import sys, time
from pathlib import Path
from shovel.demo.progress import PROGRESS_FILE, ProgressWriter
progress = ProgressWriter(Path(sys.argv[1]) / PROGRESS_FILE)
for n in range(1, 31):
    time.sleep(0.05)
    progress.read_to(n)
"""


def test_a_restart_is_waited_for_while_it_reads_and_given_up_when_it_stalls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo_runs, "RESTART_STALL_S", 0.5)
    slow = subprocess.Popen([sys.executable, "-c", SLOW_RESTART, str(tmp_path)])
    try:
        assert demo_runs.wait_restart(slow, tmp_path, "native")
        assert slow.returncode == 0
    finally:
        slow.kill()
        slow.wait()
    # One that reads nothing more and does not exit.
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert not demo_runs.wait_restart(stuck, tmp_path, "native")
        assert stuck.poll() is None
    finally:
        stuck.kill()
        stuck.wait()


PUBLISHED = 100


def _stored_messages(seqs: range | list[int]) -> bytes:
    """What shovel stores for stream messages `seqs` (one publisher: sequence n is the n-th
    message published)."""
    return b"".join(
        json.dumps(
            {
                "seq": n,
                "subject": "S.orders",
                "id": msg_id(n),
                "data": base64.b64encode(payload(n)).decode(),
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for n in seqs
    )


def _count_against(
    monkeypatch: pytest.MonkeyPatch,
    stored: range | list[int],
    view: ServerView,
    deliverable: Deliverable,
) -> tuple[Tally, natstally.NatsFigures]:
    """nats_tally over a store holding messages `stored` (the child read as many)."""
    monkeypatch.setattr(natstally, "stored_bytes", lambda _d, _c: _stored_messages(stored))
    return nats_tally(Path("unused"), len(stored), view, deliverable)


def _nats_count(
    monkeypatch: pytest.MonkeyPatch,
    stored: range | list[int],
    view: ServerView,
    drained: range,
    *,
    complete: bool,
) -> tuple[Tally, natstally.NatsFigures]:
    """nats_tally over a store holding `stored` and a drain that pulled `drained`."""
    deliverable = Deliverable(
        seqs=set(drained), complete=complete, stalled=None if complete else "it stalled"
    )
    return _count_against(monkeypatch, stored, view, deliverable)


def _view(acked: int, ack_floor: int | None = None) -> ServerView:
    """The server's figures after a child that acknowledged `acked` of PUBLISHED messages
    (up to `ack_floor` in order) and holds none unacknowledged."""
    floor = acked if ack_floor is None else ack_floor
    return ServerView(PUBLISHED, floor, 0, 0, PUBLISHED - acked)


def test_a_nats_drain_that_did_not_finish_counts_what_it_missed_as_unknown_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1..40 stored and acknowledged; the drain reached 41..70 of the 60 still deliverable.
    t, n = _nats_count(monkeypatch, range(1, 41), _view(40), range(41, 71), complete=False)
    assert (n.lost, n.uncounted, t.lost, t.uncounted) == (0, 30, 0, 30)
    assert n.consistent is None
    assert n.drain_stalled == "it stalled"
    # The same drain, finished: the 30 it did not get are gone for good.
    t, n = _nats_count(monkeypatch, range(1, 41), _view(40), range(41, 71), complete=True)
    assert (n.lost, n.uncounted, t.lost, t.uncounted) == (30, 0, 30, 0)


@pytest.mark.parametrize(
    ("view", "lost"),
    [(_view(40), 5), (_view(40, ack_floor=30), 5), (_view(38, ack_floor=38), 3)],
    ids=["below-the-ack-floor", "acked-above-the-floor", "fewer-acked"],
)
def test_a_nats_drain_that_did_not_finish_still_reports_a_certain_loss(
    monkeypatch: pytest.MonkeyPatch, view: ServerView, lost: int
) -> None:
    """Acknowledged (by the server's figures) and stored nowhere is lost, drained or not."""
    t, n = _nats_count(monkeypatch, range(1, 36), view, range(41, 71), complete=False)
    assert (n.lost, t.lost) == (lost, lost)
    assert n.uncounted == PUBLISHED - 35 - 30 - lost


def _incomplete_run(cell: Cell, lost: int = 0) -> RunResult:
    """A run that stored what it counted and exited 0, whose count was cut short."""
    return replace(
        _clean_run(cell),
        tally=Tally(10, 10 - lost - 4, 10 - lost - 4, lost, 0, 0, 0, uncounted=4),
        count_incomplete="the drain got nothing new for 10 s",
    )


def test_an_incomplete_count_of_shovels_runner_is_unknown_and_exits_3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    incomplete = _incomplete_run(Cell("shovel", "python"))
    summary = summarize([incomplete])
    assert (summary.failed, summary.unknown, summary.clean) == (False, True, False)
    out = tmp_path / "shovel-demo"
    assert _demo_with_runs(monkeypatch, out, incomplete) == cli.EXIT_COUNT_INCOMPLETE
    printed = capsys.readouterr()
    assert "did not keep every record" not in printed.err
    assert "the count could not be completed in shovel.python" in printed.err
    assert "the drain got nothing new for 10 s" in printed.err
    assert "That is not a loss" in printed.err
    # Not counted, never lost: in the progress line, the headline table and the full table.
    line = next(line for line in printed.err.splitlines() if "shovel's runner \u00d7 pure" in line)
    assert ": 0 of 1 run lost records, 1 not counted to the end (unknown, not lost)" in line
    headline = next(
        row for row in _table_rows(printed.out) if row[:2] == ["shovel's runner", "pure Python"]
    )
    assert headline[2:] == ["0/1 runs, 1 not counted", "0; not counted: up to 4", "0"]
    full = (out / cli.RESULTS_MD).read_text()
    row = next(line for line in full.splitlines() if line.startswith("| shovel's runner | Python"))
    assert "| 0/1, 1 not counted | 0 (0); not counted: up to 4 |" in row
    assert "count incomplete in 1/1, not counted is not lost" in row
    run = _cells(json.loads((out / cli.RESULTS_FILE).read_text()))["shovel.python"]["runs"][0]
    assert run["count_incomplete"] == "the drain got nothing new for 10 s"
    assert (run["tally"]["lost"], run["tally"]["uncounted"]) == (0, 4)
    # The picture's panel for this run.
    assert (out / cli.PICTURE_FILE).read_bytes().startswith(PNG_SIGNATURE)
    assert picture._verdict(summary).startswith(
        "none lost of what was counted; 1 run not counted to the end: up to 4 unknown"
    )


def test_the_picture_shows_every_run_not_only_the_first(tmp_path: Path) -> None:
    """The first run kept everything, the second lost 3: the answer's dots, its words and the
    timeline all show the second run's loss."""
    plt = pytest.importorskip("matplotlib.pyplot")
    cell = Cell("cancel-all", "python")
    kept = _clean_run(cell, 0)
    lossy = replace(
        _clean_run(cell, 1),
        tally=Tally(10, 7, 7, 3, 0, 0, 0),
        timeline=[(-0.1, 5, 5), (0.0, 10, 7), (0.1, 10, 7)],
    )
    results = {cell.key: [kept, lossy]}
    config = DemoConfig(2, 1000.0, 10.0, 1, tmp_path, 1)
    fig, (answer, timeline) = plt.subplots(2)
    try:
        picture._answer(answer, config, [cell], results)
        dots = [list(c.get_offsets()[:, 0]) for c in answer.collections if len(c.get_offsets())]
        assert dots == [[0, 3]]
        assert picture._verdict(summarize([kept, lossy])).startswith(
            "lost records in 1 of 2 runs: 1.5 a run on average"
        )
        picture._timeline(timeline, cell, [kept, lossy])
        # After each run's exit, a line at what it left: red where that was lost.
        after_exit = {
            (line.get_color(), tuple(line.get_ydata()))
            for line in timeline.get_lines()
            if line.get_color() != "black"
        }
        assert (picture.LOST, (3, 3)) in after_exit
        assert (picture.KEPT, (0, 0)) in after_exit
        assert timeline.get_ylim()[0] == 0
    finally:
        plt.close(fig)


def test_a_loss_in_an_incomplete_count_is_still_a_loss(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lossy = _incomplete_run(SHOVEL_NATIVE, lost=1)
    assert summarize([lossy]).failed
    assert _demo_with_runs(monkeypatch, tmp_path / "shovel-demo", lossy) == 1
    err = capsys.readouterr().err
    assert "did not keep every record in: shovel.native\n" in err
    assert "the count could not be completed in shovel.native" in err
    assert "| 1/1, 1 not counted | 1 (1); not counted: up to 4 |" in table(
        [SHOVEL_NATIVE], {SHOVEL_NATIVE.key: [lossy]}
    )
    assert picture._verdict(summarize([lossy])).startswith("lost records in 1 of 1 runs")


@contextmanager
def _feed(url: str, stream: str, messages: int) -> Iterator[NatsFeed]:
    feed = NatsFeed(url, stream, messages)
    try:
        feed.start()
        yield feed
    finally:
        feed.close()


def _child(url: str, stream: str, acked: int, held: int) -> float:
    """What a child leaves behind: it takes the first `acked` + `held` messages, acknowledges
    the first `acked` (the server confirms each) and exits holding the rest unacknowledged.
    Returns when it exited."""

    async def run() -> None:
        nc = await nats.connect(f"nats://{url}")
        try:
            sub = await nc.jetstream().pull_subscribe_bind(CONSUMER, stream)
            msgs: list[Msg] = []
            while len(msgs) < acked + held:
                msgs += await sub.fetch(acked + held - len(msgs), timeout=WAIT_S)
            for msg in msgs[:acked]:
                await msg.ack_sync()
        finally:
            await nc.close()

    asyncio.run(run())
    return time.monotonic()


def _drain(feed: NatsFeed, exited_at: float) -> tuple[ServerView, Deliverable]:
    """The server's view and the drain, as a run takes them after its child exited."""
    feed.stop_sampling()
    return feed.server_view(), feed.deliverable(exited_at)


def test_the_drain_waits_for_what_the_child_left_unacknowledged(
    demo_nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 100 messages the child held come back only ack_wait after it took them: the drain
    gets them, and everything else, and then the server has nothing left."""
    with _feed(demo_nats_url, "HELD", 3000) as feed:
        view, found = _drain(feed, _child(demo_nats_url, "HELD", acked=200, held=100))
    assert (view.ack_floor, view.num_ack_pending, view.num_pending) == (200, 100, 2700)
    assert (found.complete, found.stalled) == (True, None)
    assert found.seqs == set(range(201, 3001))
    assert found.again == set(range(201, 301))
    t, n = _count_against(monkeypatch, range(1, 201), view, found)
    assert (n.lost, n.uncounted, n.consistent, t.lost) == (0, 0, True, 0)
    # A child that acknowledged ten messages it never stored lost them.
    t, n = _count_against(monkeypatch, range(1, 191), view, found)
    assert (n.lost, n.uncounted, t.lost) == (10, 0, 10)


def test_a_drain_that_stalls_is_incomplete_and_what_it_missed_is_unknown(
    demo_nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the child holds comes back only after a minute, long after the drain gives up.
    monkeypatch.setattr(natsfeed, "ACK_WAIT_S", 60.0)
    monkeypatch.setattr(natsfeed, "STALL_S", 1.0)
    with _feed(demo_nats_url, "STALLS", 3000) as feed:
        view, found = _drain(feed, _child(demo_nats_url, "STALLS", acked=200, held=100))
    assert not found.complete
    assert found.stalled is not None
    assert "nothing new for 1 s with 100 messages still pending" in found.stalled
    assert found.seqs == set(range(301, 3001))
    t, n = _count_against(monkeypatch, range(1, 201), view, found)
    assert (n.lost, n.uncounted, n.consistent, n.drain_stalled) == (0, 100, None, found.stalled)
    assert (t.lost, t.uncounted) == (0, 100)


def test_a_slow_drain_goes_on_while_it_gets_somewhere(
    demo_nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pull of the drain slowed down, as on a busy machine: in all it takes several
    times STALL_S, and still gets every message, since each pull brings new ones."""
    monkeypatch.setattr(natsfeed, "STALL_S", 1.0)
    monkeypatch.setattr(natsfeed, "DRAIN_BATCH", 100)
    fetch = JetStreamContext.PullSubscription.fetch

    async def slow_fetch(
        self: JetStreamContext.PullSubscription, *args: Any, **kwargs: Any
    ) -> list[Msg]:
        await asyncio.sleep(0.1)
        return await fetch(self, *args, **kwargs)

    with _feed(demo_nats_url, "SLOW", 3000) as feed:
        exited_at = _child(demo_nats_url, "SLOW", acked=0, held=0)
        monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", slow_fetch)
        view, found = _drain(feed, exited_at)
    assert found.complete
    assert found.seqs == set(range(1, 3001))
    # 30 pulls or more, each 0.1 s longer.
    assert found.drain_s >= 3 * natsfeed.STALL_S
    _, n = _count_against(monkeypatch, [], view, found)
    assert (n.lost, n.uncounted, n.consistent) == (0, 0, True)
