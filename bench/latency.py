"""Read-to-durable latency at half load: the generator's full speed is measured first, then
it runs paced at half that rate, and the submit-to-durable histogram
(shovel_storage_write_duration_seconds: a batch handed to storage until it is fsynced) is
scraped after a warm-up and again at the end of a fixed window; the difference between the
two scrapes holds the window's batches only.

Quantiles come from the histogram's buckets (linear inside a bucket, as Prometheus'
histogram_quantile does), so they are as coarse as the buckets: with the default fsync
interval of 100 ms most batches land between 0.05 and 0.25 s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import BenchError, fresh, progress, remove
from inputs import verify_generated
from scrape import Histogram
from service import Service, ended_cleanly

HISTOGRAM = "shovel_storage_write_duration_seconds"
READ = "shovel_records_read_total"
DEFAULT_FSYNC_INTERVAL_MS = 100
OUT_NAME = "latency-out"


@dataclass(frozen=True, slots=True)
class Window:
    """What one paced or unpaced run did between two scrapes."""

    seconds: float
    records: float
    histogram: Histogram

    @property
    def rate(self) -> float:
        """Records read per second."""
        return self.records / self.seconds


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """The calibration, the half-load window and its quantiles."""

    title = "Read-to-durable latency at half load"  # the section's title in reports

    fsync_interval_ms: int
    shovel_flags: list[str]
    full_rate: float
    requested_rate: float
    window: Window

    @property
    def p50_s(self) -> float:
        """Median submit-to-durable time, from the buckets."""
        return self.window.histogram.quantile(0.50)

    @property
    def p99_s(self) -> float:
        """99th percentile submit-to-durable time, from the buckets."""
        return self.window.histogram.quantile(0.99)

    @property
    def mean_s(self) -> float:
        """Mean submit-to-durable time (exact: the histogram's sum over its count)."""
        h = self.window.histogram
        return h.total / h.count if h.count else float("nan")

    def lines(self) -> list[str]:
        """The window's histogram, one line per bucket that holds batches."""
        return [
            f"{low * 1e3:8.1f} - {high * 1e3:8.1f} ms: {int(n):6d} batches"
            for low, high, n in self.window.histogram.per_bucket()
            if n > 0
        ]

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict): reported, with no goal to meet."""
        return [
            (
                "read-to-durable at half load",
                "reported",
                f"p50 {self.p50_s * 1e3:.1f} ms, p99 {self.p99_s * 1e3:.1f} ms "
                f"(fsync interval {self.fsync_interval_ms} ms)",
                "-",
            )
        ]

    def figures(self) -> dict[str, object]:
        """The quantiles, the mean and the rate achieved."""
        return {
            "p50_s": self.p50_s,
            "p99_s": self.p99_s,
            "mean_s": self.mean_s,
            "achieved_rate": self.window.rate,
        }

    def summary(self) -> list[str]:
        """The rates and quantiles as lines of text."""
        w = self.window
        return [
            f"generator at full speed: {self.full_rate:,.0f} records/s; paced at "
            f"{self.requested_rate:,.0f}/s, it read {w.rate:,.0f}/s over {w.seconds:.1f} s",
            f"fsync interval {self.fsync_interval_ms} ms; shovel flags: "
            f"{' '.join(self.shovel_flags) or '(defaults)'}",
            f"submit-to-durable over {int(w.histogram.count):,} batches: "
            f"p50 {self.p50_s * 1e3:.1f} ms, p99 {self.p99_s * 1e3:.1f} ms, "
            f"mean {self.mean_s * 1e3:.1f} ms (quantiles estimated from the buckets)",
        ]


def _run_window(
    out: Path, rate: float, flags: Sequence[str], warmup_s: float, window_s: float
) -> Window:
    """Runs the generator at `rate` (0: unpaced), measures a window after the warm-up, stops
    it with SIGTERM and checks what it stored."""
    fresh(out)
    try:
        with Service("generate", out, flags, ("--generate-rate", f"{rate:.0f}")) as svc:
            svc.wait_storing()
            time.sleep(warmup_s)  # the measured window starts after start-up effects
            first, started = svc.scrape(), time.perf_counter()
            time.sleep(window_s)  # the window itself: a fixed span of time
            last, ended_at = svc.scrape(), time.perf_counter()
            stopped = svc.stop()
            ended = ended_cleanly(out, stopped, svc.log_text())
        verify_generated(out, ended.committed_offset)
    finally:
        remove(out)
        remove(out.with_name(out.name + ".log"))
    if HISTOGRAM not in last.histograms:
        raise BenchError(f"{HISTOGRAM} is missing from /metrics")
    return Window(
        ended_at - started,
        last.value(READ) - first.value(READ),
        last.histograms[HISTOGRAM].minus(first.histograms[HISTOGRAM]),
    )


def measure(
    workdir: Path,
    extra: Sequence[str],
    *,
    fsync_interval_ms: int,
    window_s: float,
    calibrate_s: float,
    warmup_s: float = 2.0,
) -> LatencyResult:
    """Calibrates the generator's full speed over `calibrate_s`, then measures `window_s` at
    half of it."""
    flags = [*extra, "--fsync-interval-ms", str(fsync_interval_ms)]
    out = workdir / OUT_NAME
    full = _run_window(out, 0, flags, warmup_s=1.0, window_s=calibrate_s)
    progress(f"generator at full speed: {full.rate:,.0f} records/s over {full.seconds:.1f} s")
    if full.rate < 2:
        raise BenchError(f"the generator read only {full.rate:.1f} records/s at full speed")
    half = full.rate / 2
    progress(
        f"pacing it at {half:,.0f} records/s for {window_s:g} s after a {warmup_s:g} s warm-up"
    )
    window = _run_window(out, half, flags, warmup_s, window_s)
    result = LatencyResult(fsync_interval_ms, list(extra), full.rate, half, window)
    for line in result.lines():
        progress(line)
    return result
