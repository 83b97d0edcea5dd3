"""Throughput: shovel against `dd bs=1M conv=fdatasync`, copying the same input on the same
disk, in rounds that alternate which tool goes first.

Both read the input from the page cache (it is never dropped) and both end with the copy
durable: dd by fdatasync, shovel by its own fsyncs before it exits 0. Each round gives a
wall-time ratio (dd's wall time over shovel's: shovel's throughput as a fraction of dd's) and
a CPU ratio (shovel's user + sys over dd's); the targets apply to the medians of these
per-round ratios, so that each comparison is made on the same state of a noisy disk.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import MiB, progress, verdict
from copies import Usage, run_pair
from inputs import InputFile

MIN_WALL_RATIO = 0.8  # shovel's throughput at least 0.8 x dd's
MAX_CPU_RATIO = 3.0  # shovel's CPU time at most 3 x dd's


@dataclass(frozen=True, slots=True)
class Round:
    """One dd copy and one shovel copy of the same input."""

    number: int
    dd_first: bool
    dd: Usage
    shovel: Usage

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
        order = "dd first    " if self.dd_first else "shovel first"
        return (
            f"round {self.number} ({order}): "
            f"dd {self.dd.wall_s:6.3f} s ({mib / self.dd.wall_s:6.0f} MiB/s), "
            f"CPU {self.dd.cpu_s:5.2f} s | "
            f"shovel {self.shovel.wall_s:6.3f} s ({mib / self.shovel.wall_s:6.0f} MiB/s), "
            f"CPU {self.shovel.cpu_s:5.2f} s (user {self.shovel.user_s:.2f}, "
            f"sys {self.shovel.sys_s:.2f}), peak RSS {self.shovel.rss_mib:5.1f} MiB | "
            f"ratio {self.wall_ratio:.2f}x, CPU {self.cpu_ratio:.1f}x"
        )


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
        return out

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
        }

    def summary(self) -> list[str]:
        """The medians and verdicts as lines of text."""
        m = self.medians()
        flags = " ".join(self.shovel_flags) or "(defaults)"
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


def measure(inp: InputFile, workdir: Path, rounds: int, extra: Sequence[str]) -> ThroughputResult:
    """`rounds` rounds of both tools, alternating which goes first (dd in odd rounds)."""
    done: list[Round] = []
    for i in range(rounds):
        dd_first = i % 2 == 0
        dd, shovel = run_pair(inp, workdir, extra, dd_first)
        done.append(Round(i + 1, dd_first, dd, shovel))
        progress(done[-1].line(inp.mib))
    return ThroughputResult(inp.size, inp.records, list(extra), done)
