"""Throughput: shovel against `dd bs=1M conv=fdatasync`, copying the same input on the same
disk, in rounds that rotate which tool goes first.

Both read the input from the page cache (it is never dropped) and both end with the copy
durable: dd by fdatasync, shovel by its own fsyncs before it exits 0. Each round gives a
wall-time ratio (dd's wall time over shovel's: shovel's throughput as a fraction of dd's) and
a CPU ratio (shovel's user + sys over dd's); the targets apply to the medians of these
per-round ratios, so that each comparison is made on the same state of a noisy disk.

Each round also copies the input with the classic design (classic.py: shovel's pipeline over
the demo's pure-Python client), unless left out: a row to compare, with no target. That client
never fsyncs, so its wall time is that of a copy left in the page cache; the fdatasync its file
still needed right after it exited is timed apart and shown beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import MiB, progress, verdict
from copies import ClassicCopy, Usage, run_classic, run_dd, run_shovel
from inputs import InputFile

MIN_WALL_RATIO = 0.8  # shovel's throughput at least 0.8 x dd's
MAX_CPU_RATIO = 3.0  # shovel's CPU time at most 3 x dd's
CLASSIC_DURABILITY = (
    "the classic design's client (shovel/demo/pyclient.py) never fsyncs: it exits with its "
    "copy in the page cache, not durable, and its offset file saved without fsync either; "
    "dd and shovel exit with theirs fsynced. '+ fdatasync' is an fdatasync of its file timed "
    "right after it exited, not included in its wall time"
)


@dataclass(frozen=True, slots=True)
class Round:
    """One dd copy, one shovel copy and maybe one classic copy of the same input."""

    number: int
    order: tuple[str, ...]  # the tools in the order they ran
    dd: Usage
    shovel: Usage
    classic: ClassicCopy | None = None

    @property
    def wall_ratio(self) -> float:
        """shovel's throughput as a fraction of dd's (dd's wall time over shovel's)."""
        return self.dd.wall_s / self.shovel.wall_s

    @property
    def cpu_ratio(self) -> float:
        """shovel's CPU time (user + sys) as a multiple of dd's."""
        return self.shovel.cpu_s / self.dd.cpu_s

    def line(self, mib: float) -> str:
        """The round as one line of text, for an input of `mib` MiB."""
        line = (
            f"round {self.number} ({self.order[0]} first): "
            f"dd {self.dd.wall_s:6.3f} s ({mib / self.dd.wall_s:6.0f} MiB/s), "
            f"CPU {self.dd.cpu_s:5.2f} s | "
            f"shovel {self.shovel.wall_s:6.3f} s ({mib / self.shovel.wall_s:6.0f} MiB/s), "
            f"CPU {self.shovel.cpu_s:5.2f} s (user {self.shovel.user_s:.2f}, "
            f"sys {self.shovel.sys_s:.2f}), peak RSS {self.shovel.rss_mib:5.1f} MiB | "
            f"ratio {self.wall_ratio:.2f}x, CPU {self.cpu_ratio:.1f}x"
        )
        if self.classic is not None:
            c = self.classic.usage
            line += (
                f" | classic {c.wall_s:6.3f} s ({mib / c.wall_s:6.0f} MiB/s) "
                f"+ fdatasync {self.classic.fdatasync_s:.3f} s, CPU {c.cpu_s:5.2f} s "
                f"(user {c.user_s:.2f}, sys {c.sys_s:.2f}), peak RSS {c.rss_mib:5.1f} MiB"
            )
        return line

    def classic_ratios(self) -> dict[str, float] | None:
        """The classic copy against dd and against shovel (None without one)."""
        if self.classic is None:
            return None
        c = self.classic.usage
        durable_s = c.wall_s + self.classic.fdatasync_s
        return {
            "classic_dd_throughput": self.dd.wall_s / c.wall_s,
            "classic_dd_cpu": c.cpu_s / self.dd.cpu_s,
            "shovel_classic_throughput": c.wall_s / self.shovel.wall_s,
            "shovel_classic_durable_throughput": durable_s / self.shovel.wall_s,
            "shovel_classic_cpu": self.shovel.cpu_s / c.cpu_s,
        }


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """The rounds and the medians the targets apply to."""

    title = "Throughput against dd"  # the section's title in reports

    input_bytes: int
    input_records: int
    shovel_flags: list[str]
    rounds: list[Round]

    def lines(self) -> list[str]:
        """One line per round."""
        return [r.line(self.input_bytes / MiB) for r in self.rounds]

    @property
    def wall_ratio(self) -> float:
        """Median over rounds of shovel's throughput / dd's."""
        return statistics.median([r.wall_ratio for r in self.rounds])

    @property
    def cpu_ratio(self) -> float:
        """Median over rounds of shovel's CPU time / dd's."""
        return statistics.median([r.cpu_ratio for r in self.rounds])

    @property
    def wall_ok(self) -> bool:
        """Whether the throughput target holds."""
        return self.wall_ratio >= MIN_WALL_RATIO

    @property
    def cpu_ok(self) -> bool:
        """Whether the CPU target holds."""
        return self.cpu_ratio <= MAX_CPU_RATIO

    def medians(self) -> dict[str, dict[str, float]]:
        """Median wall, CPU, user, sys time and MiB/s of each tool, and shovel's peak RSS."""
        mib = self.input_bytes / MiB
        out: dict[str, dict[str, float]] = {}
        for tool in ("dd", "shovel"):
            runs: list[Usage] = [getattr(r, tool) for r in self.rounds]
            wall = statistics.median([u.wall_s for u in runs])
            out[tool] = {
                "wall_s": wall,
                "mib_per_s": mib / wall,
                "cpu_s": statistics.median([u.cpu_s for u in runs]),
                "user_s": statistics.median([u.user_s for u in runs]),
                "sys_s": statistics.median([u.sys_s for u in runs]),
                "peak_rss_mib": max(u.rss_mib for u in runs),
            }
        out["shovel"]["records_per_s"] = self.input_records / out["shovel"]["wall_s"]
        classic = [r.classic for r in self.rounds if r.classic is not None]
        if classic:
            wall = statistics.median([c.usage.wall_s for c in classic])
            out["classic"] = {
                "wall_s": wall,
                "mib_per_s": mib / wall,
                "fdatasync_s": statistics.median([c.fdatasync_s for c in classic]),
                "wall_plus_fdatasync_s": statistics.median(
                    [c.usage.wall_s + c.fdatasync_s for c in classic]
                ),
                "cpu_s": statistics.median([c.usage.cpu_s for c in classic]),
                "user_s": statistics.median([c.usage.user_s for c in classic]),
                "sys_s": statistics.median([c.usage.sys_s for c in classic]),
                "peak_rss_mib": max(c.usage.rss_mib for c in classic),
            }
        return out

    def classic_ratios(self) -> dict[str, float] | None:
        """Medians over rounds of the classic design against dd and against shovel (None
        when no round copied with it)."""
        per_round = [x for r in self.rounds if (x := r.classic_ratios()) is not None]
        if not per_round:
            return None
        return {k: statistics.median([x[k] for x in per_round]) for k in per_round[0]}

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each target."""
        return [
            (
                "throughput shovel/dd, median",
                f">= {MIN_WALL_RATIO}x",
                f"{self.wall_ratio:.2f}x",
                verdict(self.wall_ok),
            ),
            (
                "CPU time shovel/dd, median",
                f"<= {MAX_CPU_RATIO:g}x",
                f"{self.cpu_ratio:.1f}x",
                verdict(self.cpu_ok),
            ),
        ]

    def figures(self) -> dict[str, object]:
        """The figures the targets apply to."""
        return {
            "medians": self.medians(),
            "wall_ratio": self.wall_ratio,
            "cpu_ratio": self.cpu_ratio,
            "classic_ratios": self.classic_ratios(),
        }

    def summary(self) -> list[str]:
        """The medians and verdicts as lines of text."""
        m = self.medians()
        flags = " ".join(self.shovel_flags) or "(defaults)"
        return [*self._summary(m, flags), *self._classic_summary(m)]

    def _classic_summary(self, m: dict[str, dict[str, float]]) -> list[str]:
        ratios = self.classic_ratios()
        if ratios is None or "classic" not in m:
            return []
        c = m["classic"]
        return [
            f"median classic: {c['wall_s']:.3f} s wall ({c['mib_per_s']:,.0f} MiB/s) "
            f"+ {c['fdatasync_s']:.3f} s fdatasync after exit "
            f"({c['wall_plus_fdatasync_s']:.3f} s to durable), {c['cpu_s']:.2f} s CPU "
            f"(user {c['user_s']:.2f}, sys {c['sys_s']:.2f}), "
            f"peak RSS {c['peak_rss_mib']:.1f} MiB; every copy equal to the input byte for "
            "byte, its saved offset the input's size",
            f"classic/dd, median of rounds (no target): throughput "
            f"{ratios['classic_dd_throughput']:.2f}x, CPU time {ratios['classic_dd_cpu']:.1f}x",
            f"shovel/classic, median of rounds: throughput "
            f"{ratios['shovel_classic_throughput']:.2f}x "
            f"({ratios['shovel_classic_durable_throughput']:.2f}x against classic + its "
            f"fdatasync), CPU time {ratios['shovel_classic_cpu']:.2f}x",
            f"durability: {CLASSIC_DURABILITY}",
        ]

    def _summary(self, m: dict[str, dict[str, float]], flags: str) -> list[str]:
        return [
            f"input {self.input_bytes / MiB:,.0f} MiB, {self.input_records:,} records of "
            f"100 bytes; shovel flags: {flags}; rounds: {len(self.rounds)}",
            f"median dd:     {m['dd']['wall_s']:.3f} s wall ({m['dd']['mib_per_s']:,.0f} MiB/s), "
            f"{m['dd']['cpu_s']:.2f} s CPU, peak RSS {m['dd']['peak_rss_mib']:.1f} MiB "
            "(the launcher's floor: see launch.py)",
            f"median shovel: {m['shovel']['wall_s']:.3f} s wall "
            f"({m['shovel']['mib_per_s']:,.0f} MiB/s, "
            f"{m['shovel']['records_per_s']:,.0f} records/s), {m['shovel']['cpu_s']:.2f} s CPU "
            f"(user {m['shovel']['user_s']:.2f}, sys {m['shovel']['sys_s']:.2f}), "
            f"peak RSS {m['shovel']['peak_rss_mib']:.1f} MiB",
            f"throughput shovel/dd, median of rounds: {self.wall_ratio:.2f}x "
            f"(target >= {MIN_WALL_RATIO}x): {verdict(self.wall_ok)}",
            f"CPU time shovel/dd, median of rounds: {self.cpu_ratio:.1f}x "
            f"(target <= {MAX_CPU_RATIO:g}x): {verdict(self.cpu_ok)}",
        ]


def measure(
    inp: InputFile, workdir: Path, rounds: int, extra: Sequence[str], classic: bool = True
) -> ThroughputResult:
    """`rounds` rounds of dd, shovel and (with `classic`) the classic design, the tool that
    goes first rotating from round to round (dd in the first)."""
    tools = ("dd", "shovel", "classic") if classic else ("dd", "shovel")
    done: list[Round] = []
    for i in range(rounds):
        first = i % len(tools)
        order = tools[first:] + tools[:first]
        usage: dict[str, Usage] = {}
        classic_copy: ClassicCopy | None = None
        for tool in order:
            if tool == "classic":
                classic_copy = run_classic(inp, workdir / "classic-out", extra)
            else:
                usage[tool] = _RUNNERS[tool](inp, workdir / f"{tool}-out", extra)
        done.append(Round(i + 1, order, usage["dd"], usage["shovel"], classic_copy))
        progress(done[-1].line(inp.mib))
    return ThroughputResult(inp.size, inp.records, list(extra), done)


_RUNNERS: dict[str, Callable[[InputFile, Path, Sequence[str]], Usage]] = {
    "dd": lambda inp, out, _extra: run_dd(inp, out),
    "shovel": run_shovel,
}
