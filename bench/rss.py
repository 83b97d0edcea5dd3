"""Peak RSS against input size: one shovel copy (and one dd copy, for the throughput ratio)
at each size of a sweep, on one input file grown between the sizes.

shovel's memory must not depend on how much it moves: the peak RSS (ru_maxrss from wait4)
should stay under the target at every size and be flat, the largest peak within a tenth of
the smallest. The throughput at each size comes with it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import MiB, progress, remove, verdict
from copies import Usage, run_pair, run_shovel
from inputs import GrowingInput, bytes_for

MAX_RSS_MIB = 64.0
FLAT_TOLERANCE = 0.10  # the largest peak at most 10 % above the smallest
DEFAULT_SIZES_MIB = (100, 500, 1024, 2048, 4096)
INPUT_NAME = "input-sweep.ndjson"


@dataclass(frozen=True, slots=True)
class SizePoint:
    """One size of the sweep."""

    size_bytes: int
    records: int
    shovel: Usage
    dd: Usage | None

    @property
    def mib(self) -> float:
        """Input size in MiB."""
        return self.size_bytes / MiB

    @property
    def shovel_mib_per_s(self) -> float:
        """shovel's throughput."""
        return self.mib / self.shovel.wall_s

    @property
    def dd_mib_per_s(self) -> float | None:
        """dd's throughput, when dd ran."""
        return None if self.dd is None else self.mib / self.dd.wall_s

    def line(self) -> str:
        """The point as one line of text."""
        text = (
            f"{self.mib:7,.0f} MiB: peak RSS {self.shovel.rss_mib:6.1f} MiB | shovel "
            f"{self.shovel.wall_s:7.3f} s, {self.shovel_mib_per_s:6.0f} MiB/s, "
            f"CPU {self.shovel.cpu_s:6.2f} s"
        )
        if self.dd is not None:
            text += (
                f" | dd {self.dd.wall_s:7.3f} s, {self.dd_mib_per_s:6.0f} MiB/s | "
                f"ratio {self.dd.wall_s / self.shovel.wall_s:.2f}x"
            )
        return text


@dataclass(frozen=True, slots=True)
class RssResult:
    """The sweep and its verdicts."""

    title = "Peak RSS against input size"  # the section's title in reports

    shovel_flags: list[str]
    points: list[SizePoint]

    def lines(self) -> list[str]:
        """One line per size."""
        return [p.line() for p in self.points]

    @property
    def peak_mib(self) -> float:
        """The highest peak RSS of the sweep."""
        return max(p.shovel.rss_mib for p in self.points)

    @property
    def lowest_mib(self) -> float:
        """The lowest peak RSS of the sweep."""
        return min(p.shovel.rss_mib for p in self.points)

    @property
    def slope_mib_per_gib(self) -> float:
        """Least-squares growth of the peak RSS per GiB of input (0 with a single size)."""
        if len(self.points) < 2:
            return 0.0
        fit = statistics.linear_regression(
            [p.size_bytes / 2**30 for p in self.points], [p.shovel.rss_mib for p in self.points]
        )
        return fit.slope

    @property
    def rss_ok(self) -> bool:
        """Whether every peak is within the target."""
        return self.peak_mib <= MAX_RSS_MIB

    @property
    def flat_ok(self) -> bool:
        """Whether the largest peak is within the tolerance of the smallest."""
        return self.peak_mib <= self.lowest_mib * (1 + FLAT_TOLERANCE)

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each target."""
        return [
            (
                "peak RSS, every size",
                f"<= {MAX_RSS_MIB:.0f} MiB",
                f"{self.peak_mib:.1f} MiB",
                verdict(self.rss_ok),
            ),
            (
                "peak RSS flat across sizes",
                f"largest within {FLAT_TOLERANCE:.0%} of smallest",
                f"{self.lowest_mib:.1f} to {self.peak_mib:.1f} MiB",
                verdict(self.flat_ok),
            ),
        ]

    def figures(self) -> dict[str, object]:
        """The figures the targets apply to."""
        return {
            "peak_mib": self.peak_mib,
            "lowest_mib": self.lowest_mib,
            "slope_mib_per_gib": self.slope_mib_per_gib,
        }

    def summary(self) -> list[str]:
        """The verdicts as lines of text."""
        sizes = ", ".join(f"{p.mib:,.0f}" for p in self.points)
        return [
            f"sizes {sizes} MiB; one run each; shovel flags: "
            f"{' '.join(self.shovel_flags) or '(defaults)'}",
            f"peak RSS {self.lowest_mib:.1f} to {self.peak_mib:.1f} MiB, "
            f"slope {self.slope_mib_per_gib:+.2f} MiB per GiB of input",
            f"peak RSS <= {MAX_RSS_MIB:.0f} MiB at every size: {verdict(self.rss_ok)}",
            f"flat (largest peak within {FLAT_TOLERANCE:.0%} of the smallest): "
            f"{verdict(self.flat_ok)}",
        ]


def space_needed(sizes_mib: Sequence[float]) -> int:
    """Bytes the sweep needs at its largest size: the input and one copy of it."""
    largest = bytes_for(max(sizes_mib))
    return largest + largest * 11 // 10


def measure(
    workdir: Path, sizes_mib: Sequence[float], extra: Sequence[str], with_dd: bool
) -> RssResult:
    """One run per size, smallest first, growing one input file between sizes; the input is
    removed at the end."""
    path = workdir / INPUT_NAME
    points: list[SizePoint] = []
    try:
        with GrowingInput(path) as grower:
            for i, size in enumerate(sorted(sizes_mib)):
                inp = grower.grow_to(size)
                dd: Usage | None = None
                if with_dd:
                    dd, shovel = run_pair(inp, workdir, extra, dd_first=i % 2 == 0)
                else:
                    shovel = run_shovel(inp, workdir / "shovel-out", extra)
                points.append(SizePoint(inp.size, inp.records, shovel, dd))
                progress(points[-1].line())
    finally:
        remove(path)
    return RssResult(list(extra), points)
