"""`python -m shovel demo`: its flags, the run, and what it prints and writes."""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shovel.demo.child import CLIENTS, PATTERNS, SINK_CLIENTS
from shovel.demo.natsfeed import STALL_S, have_nats_py
from shovel.demo.natsserver import (
    ACK_WAIT_S,
    HOW_TO_GET,
    SERVER_DIR,
    DemoNatsServer,
    NatsServerError,
    find_binary,
)
from shovel.demo.runs import (
    INFLIGHT_WAIT_S,
    NATS_MESSAGES,
    RESTART_STALL_S,
    RUNS_DIR,
    STOP_AFTER_S,
    STOP_STALL_S,
    Cell,
    DemoConfig,
    RunResult,
    Runs,
)
from shovel.exitcodes import ExitCode

if TYPE_CHECKING:
    from shovel.demo.report import CellSummary

RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"
PICTURE_FILE = "timeline.png"
# shovel's pattern lost or doubled records, hung, or did not exit 0: the demonstration failed.
EXIT_SHOVEL_FAILED = 1
# Nothing of shovel's failed, but some of its runs could not be counted to the end: the
# demonstration did not conclude (which is not a loss).
EXIT_COUNT_INCOMPLETE = 3
# Ctrl-C, as a shell reports it.
EXIT_INTERRUPTED = 130


def _filled(*paragraphs: str) -> str:
    """Paragraphs of the help, each filled to 95 columns (a figure kept on one line with its
    unit)."""
    joined = (re.sub(r"(\d) s\b", "\\1\0s", " ".join(p.split())) for p in paragraphs)
    return "\n\n".join(textwrap.fill(p, 95).replace("\0", " ") for p in joined)


DESCRIPTION = """\
Stops the same asyncio pipeline (shovel's reader task, queue and storage task, over a
deterministic generator) in five ways, over two storage clients, and counts what each loses.
  stops:   no SIGTERM handler; asyncio.run stopped by SIGINT (Ctrl-C); a handler that cancels
           every task in asyncio.all_tasks(); aiorun.run; shovel's runner
  clients: a pure-Python asyncio client (a task per write, each with a latency; close()
           awaits them) and shovel's native client
Also, on a nats-server the demo starts: a remote store, a JetStream stream, written by the
classic pure-Python client (nats-py, a task per record; close() awaits them) under cancel-all
and aiorun, and by shovel's sink (--sink nats://...) under cancel-all and shovel's runner;
SIGKILL and a restart (shovel's, and the naive Python client's); and a NATS JetStream source
read by cancel-all and by shovel's runner.

""" + _filled(
    f"""Each run is a child process, stopped {STOP_AFTER_S[0]:g} to {STOP_AFTER_S[1]:g} s
        after it starts reading: the same seeded moments in every cell (with the Python client,
        and nats-py, once a write is in flight: up to {INFLIGHT_WAIT_S:g} s later). Read,
        stored, lost and doubled records are counted from the files each run leaves; into a
        JetStream stream, from what the stream holds after the run (read back: lost is what
        was read and the stream does not hold). From a NATS source, lost is what the server
        says was acknowledged and was never stored (ack_wait {ACK_WAIT_S:g} s; after the run
        the consumer is drained until the server has nothing left).""",
    f"""It prints a line per finished cell (stderr), then a short table (stdout): per stop
        and client, the runs that lost records, the mean lost per run, the exit code. It
        writes, in OUTPUT_DIR: {RESULTS_MD} (the full tables), {RESULTS_FILE} (every figure,
        timelines included), {PICTURE_FILE} (the picture) and {RUNS_DIR}/ (each run's files and
        logs). What it cannot run it leaves out, and says how to get it: pip install
        'shovel-pipeline[demo]' brings matplotlib (the picture), aiorun, nats-server (or put
        nats-server on PATH) and nats-py (the classic remote client, and what fills, drains and
        reads back the streams). It takes about a minute on two cores.""",
    f"""When it cannot count, it says so. No wait has a fixed end: a run is killed as hung
        only when, after its signal, it stores nothing more for {STOP_STALL_S:g} s (a restart:
        reads and stores nothing for {RESTART_STALL_S:g} s); the drain of a NATS consumer is
        given up after {STALL_S:g} s with nothing new, and so is the read-back of a stream.
        What it could not count is shown as not counted, with why, never as lost.""",
    """Exit codes: 0 done, every count complete; 1 shovel's runner lost or doubled a record,
        hung, or exited non-zero in some run; 2 bad usage; 3 nothing of shovel's runner failed,
        but the count of some of its runs could not be completed (stderr says why: run it
        again, with fewer --jobs or on a quieter machine); 130 interrupted (Ctrl-C).""",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000000 records/s, got {text}")
    return value


def _latency(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 5000:
        raise argparse.ArgumentTypeError(f"must be from 0 to 5000 ms, got {text}")
    return value


def _cell_patterns(text: str) -> list[str]:
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise argparse.ArgumentTypeError("name at least one cell (a pattern of cell names)")
    return patterns


def _nats_messages(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10_000_000:
        raise argparse.ArgumentTypeError(f"must be from 0 to 10000000, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The flags of `python -m shovel demo`."""
    p = argparse.ArgumentParser(
        prog="python -m shovel demo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--runs", type=_positive_int, default=5, help="runs per cell (default: %(default)s)"
    )
    p.add_argument(
        "--rate",
        type=_rate,
        default=5000.0,
        help="generator records per second in every run (default: %(default)g)",
    )
    p.add_argument(
        "--latency-ms",
        type=_latency,
        default=10.0,
        help="the Python client's latency per write (each draws x0.5 to x1.5 of it), a "
        "stand-in for a remote store; it makes the naive patterns' losses visible "
        "(default: %(default)g)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seeds the stop moments (the same for every cell) and the latency draws "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("shovel-demo"),
        help=f"where {RESULTS_MD}, {RESULTS_FILE}, {PICTURE_FILE} and {RUNS_DIR}/ go; a "
        "previous demo's are replaced (default: %(default)s)",
    )
    p.add_argument(
        "--nats-messages",
        type=_nats_messages,
        default=NATS_MESSAGES,
        help="messages in each NATS run's stream, read as fast as the child can; 0 leaves the "
        "NATS cells out (default: %(default)s)",
    )
    p.add_argument(
        "--cells",
        type=_cell_patterns,
        default=["*"],
        metavar="PATTERN[,PATTERN...]",
        help="only the cells whose names match one of these shell patterns; a cell's name is "
        "STOP.CLIENT, then .kill-restart or .nats where it is one (as in results.json): e.g. "
        "'*.sink,*.nats-py' for the JetStream store's cells, 'cancel-all.*' for one stop "
        "(default: all)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=3,
        help="runs at a time (default: %(default)s)",
    )
    return p


def _cells(with_nats: bool) -> list[Cell]:
    """Every cell, a stop's cells together: those of a local store, then those of a JetStream
    store (the clients of SINK_CLIENTS measured under it); the SIGKILL cells; the NATS source's
    (`with_nats`)."""
    cells = [
        Cell(pattern, client)
        for pattern in PATTERNS
        for client in [*CLIENTS, *(c for c, stops in SINK_CLIENTS.items() if pattern in stops)]
    ]
    nats = [Cell(pattern, "native", source="nats") for pattern in ("cancel-all", "shovel")]
    return [
        *cells,
        Cell("no-handler", "python", kill_restart=True),
        Cell("shovel", "native", kill_restart=True),
        *(nats if with_nats else []),
    ]


def _chosen(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells whose names match one of `patterns`."""
    return [c for c in cells if any(fnmatch.fnmatchcase(c.key, p) for p in patterns)]


def _needs_nats(cell: Cell) -> bool:
    return cell.source == "nats" or cell.sink


def _start_nats(
    config: DemoConfig, wanted: bool = True
) -> tuple[DemoNatsServer | None, str | None]:
    """The demo's NATS server, or why there is none (None, None: not `wanted`)."""
    if not wanted:
        return None, None
    if not have_nats_py():
        return None, (
            "nats-py is not installed, so the NATS cells were left out: "
            "pip install 'shovel-pipeline[demo]' to include them"
        )
    binary = find_binary()
    if binary is None:
        return None, f"no nats-server found, so the NATS cells were left out: {HOW_TO_GET}"
    try:
        return DemoNatsServer(binary, config.output_dir / SERVER_DIR), None
    except NatsServerError as e:
        return None, f"the NATS cells were left out: {e}"


def _prepare(output_dir: Path) -> str | None:
    """Makes `output_dir` ready; returns why it cannot be used."""
    if output_dir.exists():
        if not output_dir.is_dir():
            return f"{output_dir} exists and is not a directory"
        ours = {RESULTS_FILE, RESULTS_MD, PICTURE_FILE, RUNS_DIR, SERVER_DIR}
        others = [p.name for p in output_dir.iterdir() if p.name not in ours]
        if others:
            return (
                f"{output_dir} holds files that are not a demo's ({', '.join(sorted(others)[:3])}"
                "): choose another --output-dir"
            )
        shutil.rmtree(output_dir / RUNS_DIR, ignore_errors=True)
        shutil.rmtree(output_dir / SERVER_DIR, ignore_errors=True)
        for name in (RESULTS_FILE, RESULTS_MD, PICTURE_FILE):
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def main(argv: list[str]) -> int:
    """Runs the demonstration; returns the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return ExitCode.USAGE if e.code else 0
    config = DemoConfig(
        runs=args.runs,
        rate=args.rate,
        latency_ms=args.latency_ms,
        seed=args.seed,
        output_dir=args.output_dir,
        jobs=args.jobs,
        nats_messages=args.nats_messages,
    )
    with_aiorun = importlib.util.find_spec("aiorun") is not None
    cells = _chosen(_cells(config.nats_messages > 0), args.cells)
    if not cells:
        sys.stderr.write(
            f"python -m shovel demo: error: --cells {','.join(args.cells)} names no cell\n"
        )
        return ExitCode.USAGE
    why = _prepare(config.output_dir)
    if why is not None:
        sys.stderr.write(f"python -m shovel demo: error: {why}\n")
        return ExitCode.USAGE
    notes = []
    # aiorun's pattern needs aiorun installed.
    if not with_aiorun and any(cell.pattern == "aiorun" for cell in cells):
        cells = [cell for cell in cells if cell.pattern != "aiorun"]
        notes.append(
            "aiorun is not installed, so its pattern was left out: "
            "pip install 'shovel-pipeline[demo]' to include it"
        )
    server, no_nats = _start_nats(config, any(map(_needs_nats, cells)))
    if no_nats is not None:
        notes.append(no_nats)
        cells = [cell for cell in cells if not _needs_nats(cell)]
    if not cells:
        sys.stderr.write("".join(f"{note}\n" for note in notes))
        sys.stderr.write("python -m shovel demo: error: none of the cells chosen can run here\n")
        return ExitCode.USAGE
    try:
        return _run(config, cells, server, notes)
    finally:
        if server is not None:
            server.stop()


def _run(
    config: DemoConfig, cells: list[Cell], server: DemoNatsServer | None, notes: list[str]
) -> int:
    from shovel.demo.picture import draw, have_matplotlib  # noqa: PLC0415
    from shovel.demo.report import (  # noqa: PLC0415
        progress_line,
        results_markdown,
        short_summary,
        summarize,
        write_json,
    )

    sys.stderr.write(
        f"demo: {len(cells)} cells \u00d7 {config.runs} runs, {config.jobs} runs at a time; "
        "a line as each cell finishes\n"
    )
    started = time.monotonic()
    by_key = {cell.key: cell for cell in cells}
    finished: dict[str, list[RunResult]] = {cell.key: [] for cell in cells}
    cells_done = 0

    def done(result: RunResult) -> None:
        nonlocal cells_done
        runs = finished[result.cell]
        runs.append(result)
        if len(runs) < config.runs:
            return
        cells_done += 1
        line = progress_line(by_key[result.cell], summarize(runs))
        elapsed = time.monotonic() - started
        sys.stderr.write(f"demo: [{cells_done}/{len(cells)}] {line} \u2014 {elapsed:.0f} s in\n")
        sys.stderr.flush()

    try:
        results = Runs(config, server.url if server is not None else None).run_all(cells, done)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: the runs still going were ended\n")
        return EXIT_INTERRUPTED
    write_json(config.output_dir / RESULTS_FILE, config, cells, results)
    full = config.output_dir / RESULTS_MD
    full.write_text(results_markdown(config, cells, results))
    sys.stdout.write(short_summary(config, cells, results) + "\n")
    sys.stdout.write(
        f"\nThe full tables: {full}; every figure: {config.output_dir / RESULTS_FILE}\n"
    )
    sys.stdout.flush()
    for note in notes:
        sys.stderr.write(note + "\n")
    if have_matplotlib():
        draw(config.output_dir / PICTURE_FILE, config, cells, results)
        sys.stderr.write(f"the picture: {config.output_dir / PICTURE_FILE}\n")
    else:
        sys.stderr.write(
            "no picture: matplotlib is not installed; pip install 'shovel-pipeline[demo]' "
            "(or: make demo) to get it\n"
        )
    return _verdict(cells, {cell.key: summarize(results[cell.key]) for cell in cells})


def _verdict(cells: list[Cell], summaries: dict[str, CellSummary]) -> int:
    """Says on stderr what could not be counted and whether shovel's runner failed; returns
    the exit code."""
    for cell in cells:
        why = summaries[cell.key].incomplete_why
        if why:
            sys.stderr.write(
                f"the count could not be completed in {cell.key} ({'; '.join(why)}): what it "
                "could not count is shown as not counted, not as lost\n"
            )
    shovels = [cell.key for cell in cells if cell.pattern == "shovel"]
    failed = [key for key in shovels if summaries[key].failed]
    if failed:
        sys.stderr.write(f"shovel's runner did not keep every record in: {', '.join(failed)}\n")
        return EXIT_SHOVEL_FAILED
    unknown = [key for key in shovels if summaries[key].unknown]
    if unknown:
        sys.stderr.write(
            f"shovel's runner lost and doubled nothing that was counted, but not everything "
            f"could be counted in: {', '.join(unknown)}. That is not a loss, and not a result "
            "either: run the demo again, with fewer --jobs or on a quieter machine\n"
        )
        return EXIT_COUNT_INCOMPLETE
    return 0
