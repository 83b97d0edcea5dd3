"""The demonstration's results: the table (Markdown, for the terminal and docs/demo.md),
results.json with every figure, and the timeline picture (with matplotlib, the 'demo' extra).

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
CLIENT_TITLES = {"python": "Python, a task per write", "native": "shovel's native client"}
NATS_TITLE = "NATS JetStream source (nats-py)"


def cell_title(cell: Cell) -> tuple[str, str]:
    """(pattern, client) as the table shows them."""
    pattern = PATTERN_TITLES[cell.pattern]
    if cell.kill_restart:
        pattern = "SIGKILL, restart" + (" (shovel)" if cell.pattern == "shovel" else " (naive)")
    client = CLIENT_TITLES[cell.client]
    if cell.source == "nats":
        client = f"{client}; {NATS_TITLE}"
    return pattern, client


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


def exit_text(code: int) -> str:
    """An exit code as the table shows it (a negative one: killed by that signal)."""
    return f"killed ({signal.Signals(-code).name})" if code < 0 else str(code)


def _exit_codes(summary: CellSummary) -> str:
    counts = Counter(", then ".join(exit_text(c) for c in codes) for codes in summary.exit_codes)
    return "; ".join(f"{text} ({n})" if len(counts) > 1 else text for text, n in counts.items())


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


def settings_line(config: DemoConfig) -> str:
    """What the figures were measured with."""
    return (
        f"{config.rate:g} records/s; Python client write latency {config.latency_ms:g} ms "
        f"(each x0.5 to x1.5); {config.runs} runs per cell, each stopped "
        f"{STOP_AFTER_S[0]:g} to {STOP_AFTER_S[1]:g} s after reading starts (seed {config.seed})"
    )


def table(config: DemoConfig, cells: list[Cell], results: dict[str, list[RunResult]]) -> str:
    """The results as a Markdown table, with the settings above it."""
    lines = [
        settings_line(config),
        *([nats_settings_line(config)] if any(c.source == "nats" for c in cells) else []),
        "",
        "| stop | storage client | signal | read, stored (mean) | runs that lost records "
        "| lost per run, mean (max) | doubled per run, mean (max) | exit code "
        "| stop to exit, median | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        s = summarize(results[cell.key])
        pattern, client = cell_title(cell)
        wait = "" if s.stop_to_exit_median_s is None else f"{s.stop_to_exit_median_s:.2f} s"
        losing = f"{s.losing}/{s.runs}"
        if s.incomplete:
            losing += f", {s.incomplete} unknown"
        lost = _with_uncounted(f"{s.lost_mean:.0f} ({s.lost_max})", s.uncounted_max)
        lines.append(
            f"| {pattern} | {client} | {cell.signal.name} "
            f"| {s.read_mean:,.0f}, {s.stored_mean:,.0f} | {losing} "
            f"| {lost} | {s.duplicated_mean:.0f} ({s.duplicated_max}) "
            f"| {_exit_codes(s)} | {wait} | {_notes(s)} |"
        )
    return "\n".join(lines)


def nats_settings_line(config: DemoConfig) -> str:
    """What the NATS cells were measured with."""
    return (
        f"NATS: each run reads a stream of its own holding {config.nats_messages:,} messages "
        f"(a backlog) through a durable pull consumer with ack_wait {ACK_WAIT_S:g} s; lost = "
        "acknowledged and never stored"
    )


def _mean(values: list[int]) -> str:
    return f"{statistics.fmean(values):,.0f}" if values else ""


def nats_table(cells: list[Cell], results: dict[str, list[RunResult]]) -> str:
    """The NATS cells' server-side figures (means over the runs), as a Markdown table."""
    lines = [
        "| stop | read | stored | acked (server) | stored, not acked: delivered again "
        "| read, not stored: delivered again | lost | doubled | delivered to the child, "
        "unacknowledged, delivered again | runs with those: the last one after exit, median |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        if cell.source != "nats":
            continue
        figures = [r.nats for r in results[cell.key] if r.nats is not None]
        uncounted = [f.uncounted for f in figures]
        waits = [f.last_redelivery_s for f in figures if f.last_redelivery_s is not None]
        wait = f"{len(waits)}: {statistics.median(waits):.2f} s" if waits else "0"
        lines.append(
            f"| {PATTERN_TITLES[cell.pattern]} | {_mean([f.read for f in figures])} "
            f"| {_mean([f.stored for f in figures])} | {_mean([f.acked for f in figures])} "
            f"| {_mean([f.stored_unacked for f in figures])} "
            f"| {_mean([f.read_returned for f in figures])} "
            f"| {_with_uncounted(_mean([f.lost for f in figures]), max(uncounted, default=0))} "
            f"| {_mean([f.doubled for f in figures])} "
            f"| {_mean([f.delivered_again for f in figures])} | {wait} |"
        )
    return "\n".join(lines)


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
