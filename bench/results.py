"""The results of one benchmark run: printed as text or JSON, and written as a Markdown page
(bench/RESULTS.md) with its plots beside it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import plots
from latency import LatencyResult
from machine import Machine
from nats_bench import NatsResult
from rss import RssResult
from sink_bench import SINK_HEADERS, SinkResult
from stop import StopResult
from throughput import ThroughputResult


class Measurement(Protocol):
    """What every measurement's result offers the report."""

    @property
    def title(self) -> str:
        """The section's title."""
        ...

    def lines(self) -> list[str]:
        """One line per run."""
        ...

    def summary(self) -> list[str]:
        """Medians or percentiles and verdicts, as lines of text."""
        ...

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each target."""
        ...

    def figures(self) -> dict[str, object]:
        """The derived figures, for JSON."""
        ...


@dataclass(slots=True)
class Results:
    """Whatever measurements this run made (None for those it skipped)."""

    machine: Machine
    command: str
    shovel_command: str
    classic_command: str
    started_at: float = field(default_factory=time.time)
    throughput: ThroughputResult | None = None
    rss: RssResult | None = None
    stop: StopResult | None = None
    latency: LatencyResult | None = None
    nats: NatsResult | None = None
    sink: SinkResult | None = None

    def measured(self) -> list[Measurement]:
        """The measurements made, in the order they run."""
        found = (self.throughput, self.rss, self.stop, self.latency, self.nats, self.sink)
        return [m for m in found if m is not None]

    def verdicts(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each target measured."""
        return [row for m in self.measured() for row in m.targets()]

    def text(self) -> str:
        """The report printed at the end of a run."""
        parts: list[str] = []
        for m in self.measured():
            parts += [f"== {m.title}", *m.lines(), *m.summary(), ""]
        parts.append("== Targets")
        parts += [
            f"{goal_row[0]}: {goal_row[2]} (target {goal_row[1]}): {goal_row[3]}"
            for goal_row in self.verdicts()
        ]
        if self.machine.busy:
            parts.append(f"warning: {_busy_warning(self.machine)}")
        return "\n".join(parts)

    def json(self) -> str:
        """Every measurement and figure as JSON."""
        body = asdict(self)
        body["figures"] = {m.title: m.figures() for m in self.measured()}
        body["verdicts"] = [
            dict(zip(("target", "goal", "measured", "verdict"), v, strict=True))
            for v in self.verdicts()
        ]
        return json.dumps(_finite(body), indent=2, default=str)

    def write_markdown(self, path: Path) -> list[Path]:
        """Writes the page to `path` and its plots beside it; returns the plots written (none
        without matplotlib: the page then says how to get them)."""
        drawn = plots.draw(
            path.parent,
            throughput=self.throughput,
            rss=self.rss,
            stop=self.stop,
            latency=self.latency,
            nats=self.nats,
        )
        path.write_text(_markdown(self, drawn, path.parent))
        return list(drawn.values())


def _finite(value: object) -> object:
    """`value` with NaN and infinities (no JSON for them) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _busy_warning(m: Machine) -> str:
    return (
        f"The load average was {m.load_at_start:.2f} on {m.cores} cores at the start: other "
        "work shared the machine, so these figures are a development run, not results"
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _markdown(r: Results, drawn: dict[str, Path], where: Path) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.started_at))
    md = [
        "# shovel benchmark results",
        "",
        f"Measured {when} by `bench/run.py` (see README.md).",
        "",
    ]
    if r.machine.busy:
        md += [f"> **Development run.** {_busy_warning(r.machine)}.", ""]
    md += ["## Machine", "", *_table(("", ""), r.machine.rows()), ""]
    md += [
        "## Commands",
        "",
        "```sh",
        r.command,
        "# each dd copy:",
        "dd if=INPUT of=OUTPUT bs=1M conv=fdatasync",
        "# each shovel copy:",
        r.shovel_command,
    ]
    if r.throughput is not None and any(x.classic is not None for x in r.throughput.rounds):
        md += ["# each classic-design copy (shovel's pipeline over the Python client):"]
        md += [r.classic_command]
    if r.nats is not None:
        md += [
            "# each NATS drain (bench/nats_bench.py): the baseline, or each shovel replica",
            "nats-baseline drain --server HOST:PORT --stream BENCH --consumer NAME --count N "
            f"--batch {r.nats.batch} --output FILE [--no-storage]",
            "python -m shovel --source 'nats://HOST:PORT/BENCH?consumer=NAME&batch="
            f"{r.nats.batch}' --output-dir OUTPUT --metrics-port 0 --status-interval-s 0 "
            "--log-level WARNING",
        ]
    if r.sink is not None:
        headers = " ".join(SINK_HEADERS)
        md += [
            "# each JetStream sink fill (bench/sink_bench.py): ingest, baseline, pipelined, shovel",
            "nats-baseline ingest --server HOST:PORT --subject SINK.records --count N "
            f"--payload-bytes 99 {headers} --stream SINK",
            "nats-baseline sink --server HOST:PORT --subject SINK.records --count N "
            f"--payload-bytes 99 {headers} --batch {r.sink.batch}",
            "nats-baseline publish --server HOST:PORT --subject SINK.records --count N "
            f"--payload-bytes 99 {headers} --window 256",
            "python -m shovel --source INPUT --sink 'nats://HOST:PORT/SINK?subject=SINK.records"
            f"&batch={r.sink.batch}' --output-dir STATE --metrics-port 0 --status-interval-s 0 "
            "--log-level WARNING",
        ]
    md += [
        "```",
        "",
    ]
    md += ["## Targets", "", *_table(("target", "goal", "measured", "verdict"), r.verdicts()), ""]
    for m in r.measured():
        md += [f"## {m.title}", ""]
        md += [f"- {line}" for line in m.summary()] + [""]
        md += ["```", *m.lines(), "```", ""]
        if m.title in drawn:
            md += [f"![{m.title}]({drawn[m.title].relative_to(where)})", ""]
    if not drawn and r.measured():
        md += [
            "Plots: none, matplotlib is not installed. Install it into the environment that "
            "runs the benchmark (`.venv/bin/python -m pip install matplotlib`) and run it again.",
            "",
        ]
    return "\n".join(md)
