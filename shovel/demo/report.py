"""The demonstration's results in words and figures: a line per finished cell, the headline
table (narrow, for the terminal), the full tables (results.md, which docs/demo.md includes)
and results.json with every figure. The picture is picture.py's.

A cell's verdict is one of three: clean; failed (a record lost or doubled, a hang, a non-zero
exit, counts that do not add up, a problem of the child's); or, when nothing failed but some
run's count could not be completed, unknown: what was not counted is not known to be lost, and
is shown as not counted, never as lost.
"""

from __future__ import annotations

import json
import platform
import signal
import statistics
import sys
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shovel.demo.natsserver import ACK_WAIT_S
from shovel.demo.runs import STOP_AFTER_S, Cell, DemoConfig, RunResult

PATTERN_TITLES = {
    "no-handler": "no SIGTERM handler",
    "asyncio-run": "asyncio.run + Ctrl-C",
    "cancel-all": "cancel all_tasks()",
    "aiorun": "aiorun.run",
    "shovel": "shovel's runner",
}
CLIENT_TITLES = {
    "python": "Python, a task per write",
    "native": "shovel's native client",
    "nats-py": "Python (nats-py), a task per record, into a JetStream stream",
    "sink": "shovel's JetStream sink (--sink), into a JetStream stream",
}
# The NATS source's client is async-nats, inside the native module on a runtime of its own.
NATS_TITLE = "NATS JetStream source (native, async-nats)"
# What the terminal is given: the headline table fits in it.
HEADLINE_WIDTH = 100
# The headline table's and the picture's shorter names.
CLIENT_SHORT = {
    "python": "pure Python",
    "native": "shovel's native",
    "nats-py": "nats-py client",
    "sink": "shovel's sink",
}


def cell_title(cell: Cell) -> tuple[str, str]:
    """(pattern, client) as the table shows them."""
    pattern = PATTERN_TITLES[cell.pattern]
    if cell.kill_restart:
        pattern = short_title(cell)[0]
    client = CLIENT_TITLES[cell.client]
    if cell.source == "nats":
        client = f"{client}; {NATS_TITLE}"
    return pattern, client


def short_title(cell: Cell) -> tuple[str, str]:
    """(stop, client) as the headline table, the progress lines and the picture show them."""
    stop = PATTERN_TITLES[cell.pattern]
    if cell.kill_restart:
        stop = "SIGKILL, " + ("shovel's restart" if cell.pattern == "shovel" else "naive restart")
    if cell.source == "nats":
        stop += ", NATS"
    return stop, CLIENT_SHORT[cell.client]


@dataclass(frozen=True, slots=True)
class CellSummary:
    """A cell's runs in figures."""

    runs: int
    read_mean: float
    stored_mean: float
    losing: int
    lost_mean: float
    lost_max: int
    duplicated_mean: float
    duplicated_max: int
    exit_codes: list[list[int]]
    stop_to_exit_median_s: float | None
    hung: int
    tracebacks: int
    # Runs whose counts do not add up (read != stored + lost - duplicated, a stored line that
    # is not a record or was never read): must be 0.
    accounting_errors: int
    problems: list[str]
    # Runs whose count could not be completed, the records they could not count (mean, max),
    # and why.
    incomplete: int = 0
    uncounted_mean: float = 0.0
    uncounted_max: int = 0
    incomplete_why: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Something lost or doubled, an exit not 0, a hang, counts that do not add up."""
        return not (
            self.losing == 0
            and self.duplicated_max == 0
            and self.hung == 0
            and self.accounting_errors == 0
            and not self.problems
            and all(code == 0 for codes in self.exit_codes for code in codes[-1:])
        )

    @property
    def unknown(self) -> bool:
        """Nothing failed, but not everything could be counted."""
        return not self.failed and self.incomplete > 0

    @property
    def clean(self) -> bool:
        """Nothing lost or doubled, every exit 0, nothing hung, every count complete and
        adding up."""
        return not self.failed and self.incomplete == 0


def accounting_holds(result: RunResult) -> bool:
    """Every stored line is a true record that was read (then read = stored + lost +
    uncounted - duplicated, by how the tally counts). Over NATS (where what was read and not
    stored is delivered again, not lost), also: the server's count of acknowledged messages
    equal to those it no longer delivers, when the drain got to the end of them. A run the
    demo could not count at all breaks nothing here: it is incomplete."""
    t = result.tally
    if t is None:
        return result.count_incomplete is not None
    if t.unread != 0 or t.invalid != 0:
        return False
    return result.nats is None or result.nats.consistent is not False


def summarize(results: list[RunResult]) -> CellSummary:
    """The figures of one cell."""
    tallies = [r.tally for r in results if r.tally is not None]
    lost = [t.lost for t in tallies] or [0]
    duplicated = [t.duplicated for t in tallies] or [0]
    uncounted = [t.uncounted for t in tallies] or [0]
    waits = [r.stop_to_exit_s for r in results if r.stop_to_exit_s is not None]
    return CellSummary(
        runs=len(results),
        read_mean=statistics.fmean([t.read for t in tallies] or [0]),
        stored_mean=statistics.fmean([t.stored for t in tallies] or [0]),
        losing=sum(1 for t in tallies if t.lost > 0),
        lost_mean=statistics.fmean(lost),
        lost_max=max(lost),
        duplicated_mean=statistics.fmean(duplicated),
        duplicated_max=max(duplicated),
        exit_codes=[r.exit_codes for r in results],
        stop_to_exit_median_s=statistics.median(waits) if waits else None,
        hung=sum(r.hung for r in results),
        tracebacks=sum(r.traceback for r in results),
        accounting_errors=sum(not accounting_holds(r) for r in results),
        problems=sorted({r.problem for r in results if r.problem}),
        incomplete=sum(r.count_incomplete is not None for r in results),
        uncounted_mean=statistics.fmean(uncounted),
        uncounted_max=max(uncounted),
        incomplete_why=[
            f"run {r.run}: {r.count_incomplete}" for r in results if r.count_incomplete
        ],
    )


def exit_text(code: int, *, short: bool = False) -> str:
    """An exit code as the tables show it (a negative one: killed by that signal; `short`: just
    "killed")."""
    if code >= 0:
        return str(code)
    return "killed" if short else f"killed ({signal.Signals(-code).name})"


def exit_codes_text(summary: CellSummary, *, short: bool = False) -> str:
    """A cell's exit codes: the one they all had, or each with its number of runs. `short`: a
    process killed before its restart is just "killed" (the stop says by what)."""

    def one(codes: list[int]) -> str:
        return ", then ".join(exit_text(c, short=short and len(codes) > 1) for c in codes)

    counts = Counter(one(codes) for codes in summary.exit_codes)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{text} ({n} run{'s' * (n > 1)})" for text, n in counts.items())


def figure(value: float) -> str:
    """A mean as the tables show it: whole where it is, and never rounded down to 0."""
    if value == round(value):
        return f"{round(value):,}"
    if value < 1:
        return f"{value:.2g}"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _notes(summary: CellSummary) -> str:
    notes = []
    if summary.tracebacks:
        notes.append(f"traceback in {summary.tracebacks}/{summary.runs}")
    if summary.hung:
        notes.append(f"hung in {summary.hung}/{summary.runs} (killed)")
    if summary.accounting_errors:
        notes.append(f"COUNTS DO NOT ADD UP in {summary.accounting_errors}")
    notes += summary.problems
    if summary.incomplete:
        notes.append(
            f"count incomplete in {summary.incomplete}/{summary.runs}, "
            "not counted is not lost: " + "; ".join(summary.incomplete_why)
        )
    return "; ".join(notes)


def _with_uncounted(text: str, uncounted: int) -> str:
    """A figure of lost records, and beside it those not counted (if any)."""
    return f"{text}; not counted: up to {uncounted:,}" if uncounted else text


def _runs_that_lost(summary: CellSummary, unit: str = "") -> str:
    """k/n, and the runs whose count is incomplete (not counted, never lost)."""
    text = f"{summary.losing}/{summary.runs}{unit}"
    return text + (f", {summary.incomplete} not counted" if summary.incomplete else "")


def _markdown(header: list[str], rows: list[list[str]], *, aligned: bool = False) -> str:
    """A Markdown table; `aligned`: padded into columns, for the terminal."""
    widths = [0] * len(header)
    if aligned:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def settings_line(config: DemoConfig) -> str:
    """What the figures were measured with."""
    return (
        f"{config.rate:g} records/s; Python client write latency {config.latency_ms:g} ms "
        f"(each x0.5 to x1.5); {config.runs} runs per cell, each stopped "
        f"{STOP_AFTER_S[0]:g} to {STOP_AFTER_S[1]:g} s after reading starts (seed {config.seed})"
    )


def nats_settings_line(config: DemoConfig) -> str:
    """What the NATS cells were measured with."""
    return (
        f"NATS: each run reads a stream of its own holding {config.nats_messages:,} messages "
        f"(a backlog) through a durable pull consumer with ack_wait {ACK_WAIT_S:g} s; lost = "
        "acknowledged and never stored"
    )


SINK_SETTINGS_LINE = (
    "JetStream store: each run's records go to a stream of its own (in memory, allow_atomic) on "
    "the demo's nats-server, a message per record; lost = read and not held by the stream "
    "after the run (read back)"
)


def _settings(config: DemoConfig, cells: list[Cell]) -> list[str]:
    nats = [nats_settings_line(config)] if any(c.source == "nats" for c in cells) else []
    sink = [SINK_SETTINGS_LINE] if any(c.sink for c in cells) else []
    return [settings_line(config), *sink, *nats]


HEADLINE_HEADER = ["stop", "client", "lost in", "lost per run, mean", "exit code"]


def headline(cells: list[Cell], results: dict[str, list[RunResult]]) -> str:
    """The answer in a narrow Markdown table, aligned for the terminal: per stop and client,
    the runs that lost records, the mean lost per run (and stored twice, where any was) and
    the exit code. What could not be counted is shown as not counted, never as lost."""
    rows = []
    for cell in cells:
        s = summarize(results[cell.key])
        stop, client = short_title(cell)
        lost = _with_uncounted(figure(s.lost_mean), s.uncounted_max)
        if s.duplicated_max:
            # Not lost, and no better.
            lost += f"; {figure(s.duplicated_mean)} stored twice"
        rows.append(
            [stop, client, _runs_that_lost(s, " runs"), lost, exit_codes_text(s, short=True)]
        )
    return _markdown(HEADLINE_HEADER, rows, aligned=True)


def short_summary(
    config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]
) -> str:
    """What the demo prints on stdout: the settings (wrapped) and the headline table."""
    settings = [textwrap.fill(line, HEADLINE_WIDTH) for line in _settings(config, cells)]
    return "\n".join([*settings, "", headline(cells, results)])


def progress_line(cell: Cell, summary: CellSummary) -> str:
    """A finished cell in one line: what its runs lost, and how they exited."""
    stop, client = short_title(cell)
    s = summary
    text = f"{stop} \u00d7 {client}: {s.losing} of {s.runs} run{'s' * (s.runs > 1)} lost records"
    if s.losing:
        text += f" (mean {figure(s.lost_mean)} a run)"
    if s.duplicated_max:
        text += f", stored twice: mean {figure(s.duplicated_mean)} a run"
    if s.incomplete:
        text += f", {s.incomplete} not counted to the end (unknown, not lost)"
    if s.hung:
        text += f", {s.hung} hung"
    return text + f", exit {exit_codes_text(s)}"


FULL_HEADER = [
    "stop",
    "storage client",
    "signal",
    "read (mean)",
    "stored, repeats included (mean)",
    "runs that lost records",
    "lost per run, mean (max)",
    "doubled per run, mean (max)",
    "exit code",
    "signal to exit (median)",
    "notes",
]


def table(cells: list[Cell], results: dict[str, list[RunResult]]) -> str:
    """Every cell's figures as a Markdown table."""
    rows = []
    for cell in cells:
        s = summarize(results[cell.key])
        pattern, client = cell_title(cell)
        wait = "" if s.stop_to_exit_median_s is None else f"{s.stop_to_exit_median_s:.2f} s"
        lost = _with_uncounted(f"{figure(s.lost_mean)} ({s.lost_max:,})", s.uncounted_max)
        rows.append(
            [
                pattern,
                client,
                cell.signal.name,
                f"{s.read_mean:,.0f}",
                f"{s.stored_mean:,.0f}",
                _runs_that_lost(s),
                lost,
                f"{figure(s.duplicated_mean)} ({s.duplicated_max:,})",
                exit_codes_text(s),
                wait,
                _notes(s),
            ]
        )
    return _markdown(FULL_HEADER, rows)


def _mean(values: list[int]) -> str:
    return figure(statistics.fmean(values)) if values else ""


NATS_HEADER = [
    "stop",
    "read",
    "stored",
    "acknowledged (the server's count)",
    "stored, not acknowledged: delivered again",
    "read, not stored: delivered again",
    "lost: acknowledged, never stored",
    "doubled",
    "delivered to the run, not acknowledged: delivered again",
    "runs with such redeliveries",
    "the last of them, after the exit (median)",
]


def nats_table(cells: list[Cell], results: dict[str, list[RunResult]]) -> str:
    """The NATS cells' figures by the server (means over the runs), as a Markdown table."""
    rows = []
    for cell in cells:
        if cell.source != "nats":
            continue
        figures = [r.nats for r in results[cell.key] if r.nats is not None]
        uncounted = max((f.uncounted for f in figures), default=0)
        waits = [f.last_redelivery_s for f in figures if f.last_redelivery_s is not None]
        rows.append(
            [
                PATTERN_TITLES[cell.pattern],
                _mean([f.read for f in figures]),
                _mean([f.stored for f in figures]),
                _mean([f.acked for f in figures]),
                _mean([f.stored_unacked for f in figures]),
                _mean([f.read_returned for f in figures]),
                _with_uncounted(_mean([f.lost for f in figures]), uncounted),
                _mean([f.doubled for f in figures]),
                _mean([f.delivered_again for f in figures]),
                f"{len(waits)}/{len(figures)}",
                f"{statistics.median(waits):.2f} s" if waits else "",
            ]
        )
    return _markdown(NATS_HEADER, rows)


FULL_TABLE_NOTE = """\
Per cell, over its runs. read: records the reader took from the source; stored: lines in the
store (a record stored twice counts twice; in a JetStream stream, the messages it holds after
the run); lost: read and never stored; doubled: stored more than once; signal to exit: from the
stop signal to the process's exit. A run whose count could not be completed is "not counted"
(the notes say why): what it could not count is unknown, not lost."""

NATS_TABLE_NOTE = """\
Means over each cell's runs, against what the NATS server says after the run. A message read
and not stored, or stored and not acknowledged, is delivered again (to the next reader): not
lost. Lost is what the server counts as acknowledged and the run never stored."""


def results_markdown(
    config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]
) -> str:
    """The results file: the settings, the headline table and the full tables."""
    parts = [
        "# The demo's results",
        "",
        *(f"- {line}" for line in _settings(config, cells)),
        "",
        "## Records lost, per stop and client",
        "",
        headline(cells, results),
        "",
        "## Every figure, per cell",
        "",
        FULL_TABLE_NOTE,
        "",
        table(cells, results),
    ]
    if any(cell.source == "nats" for cell in cells):
        parts += [
            "",
            "## The NATS cells, by the server's figures",
            "",
            NATS_TABLE_NOTE,
            "",
            nats_table(cells, results),
        ]
    return "\n".join(parts) + "\n"


def write_json(
    path: Path, config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]
) -> None:
    """Every figure of every run, with the settings."""
    doc = {
        "settings": {
            "rate_records_per_s": config.rate,
            "python_client_latency_ms": config.latency_ms,
            "runs_per_cell": config.runs,
            "seed": config.seed,
            "stop_after_s": config.stop_delays(),
            "jobs": config.jobs,
            "nats_messages_per_run": config.nats_messages,
            "nats_ack_wait_s": ACK_WAIT_S,
        },
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cells": [
            {
                "key": cell.key,
                "pattern": cell.pattern,
                "client": cell.client,
                "kill_restart": cell.kill_restart,
                "source": cell.source,
                "signal": cell.signal.name,
                "summary": asdict(summarize(results[cell.key])),
                "runs": [r.as_json() for r in results[cell.key]],
            }
            for cell in cells
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
