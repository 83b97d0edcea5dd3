"""SIGTERM-to-exit under full load: shovel is started, waited on until it is storing, left
to run for a random moment more, and sent SIGTERM; the interval from the kill() to the return
of wait4 is one sample.

The default source is a file, read as fast as the disk takes it: the queue and the native
client's in-flight bytes are then full, so each stop has the most to drain. With `generate`
the endless generator runs unpaced instead. Every stop must exit 0 with the reason "signal"
and nothing undelivered, and what it committed must be in the segments: a stop that fails
any of these fails the benchmark.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import BenchError, MiB, fresh, percentile, progress, remove, verdict
from inputs import InputFile, verify_generated, verify_prefix
from scrape import Scrape
from service import Ended, EndedEarly, Service, ended_cleanly

MAX_P99_S = 0.100
DEFAULT_STOPS = 50
MAX_EXTRA_DELAY_S = 0.2  # after storing begins, the signal comes within this much
OUT_NAME = "stop-out"


@dataclass(frozen=True, slots=True)
class StopSample:
    """One stop."""

    number: int
    delay_s: float
    kill_to_exit_s: float
    # shovel's own measure, from its stop report: the signal's arrival to the end of the run.
    reported_s: float | None
    committed_offset: int
    # The load just before the signal (a scrape): bytes not yet durable in the native client,
    # and batches waiting in the queue.
    inflight_bytes: float
    queued_batches: float

    def line(self, total: int, unit: str) -> str:
        """The stop as one line of text."""
        own = (
            "" if self.reported_s is None else f" (shovel's report {self.reported_s * 1e3:.1f} ms)"
        )
        return (
            f"stop {self.number:>3}/{total}: {self.kill_to_exit_s * 1e3:7.1f} ms kill-to-exit"
            f"{own}, signal {self.delay_s * 1e3:3.0f} ms after storing began with "
            f"{self.inflight_bytes / MiB:5.1f} MiB in flight and {self.queued_batches:.0f} "
            f"batches queued, committed {self.committed_offset:,} {unit}"
        )


@dataclass(frozen=True, slots=True)
class StopResult:
    """All stops and the percentiles the target applies to."""

    title = "SIGTERM to exit under full load"  # the section's title in reports

    source: str
    unit: str
    shovel_flags: list[str]
    samples: list[StopSample]
    # Attempts in which the source ran out before the signal (not counted as stops).
    source_ended: int

    def lines(self) -> list[str]:
        """One line per stop."""
        return [s.line(len(self.samples), self.unit) for s in self.samples]

    def times_s(self) -> list[float]:
        """The kill-to-exit times."""
        return [s.kill_to_exit_s for s in self.samples]

    @property
    def p50_s(self) -> float:
        """Median kill-to-exit time."""
        return percentile(self.times_s(), 50)

    @property
    def p99_s(self) -> float:
        """99th percentile of the kill-to-exit times."""
        return percentile(self.times_s(), 99)

    @property
    def max_s(self) -> float:
        """The slowest stop."""
        return max(self.times_s())

    @property
    def ok(self) -> bool:
        """Whether the target holds."""
        return self.p99_s <= MAX_P99_S

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of the target."""
        p50, p99, top = self.p50_s * 1e3, self.p99_s * 1e3, self.max_s * 1e3
        return [
            (
                "SIGTERM to exit, p99",
                f"<= {MAX_P99_S * 1e3:.0f} ms",
                f"{p99:.1f} ms (p50 {p50:.1f}, max {top:.1f})",
                verdict(self.ok),
            )
        ]

    def figures(self) -> dict[str, object]:
        """The figures the target applies to."""
        return {"p50_s": self.p50_s, "p99_s": self.p99_s, "max_s": self.max_s}

    def summary(self) -> list[str]:
        """The percentiles and verdict as lines of text."""
        ended = (
            f"; {self.source_ended} more runs ended with their source before the signal "
            "and are not counted"
            if self.source_ended
            else ""
        )
        return [
            f"{len(self.samples)} stops, source {self.source}; shovel flags: "
            f"{' '.join(self.shovel_flags) or '(defaults)'}{ended}",
            f"kill-to-exit p50 {self.p50_s * 1e3:.1f} ms, p99 {self.p99_s * 1e3:.1f} ms, "
            f"max {self.max_s * 1e3:.1f} ms",
            f"p99 <= {MAX_P99_S * 1e3:.0f} ms: {verdict(self.ok)}",
        ]


def _one_stop(
    source: str,
    source_flags: Sequence[str],
    inp: InputFile | None,
    out: Path,
    extra: Sequence[str],
    *,
    delay_s: float,
) -> tuple[float, Ended, Scrape] | None:
    """One run stopped by SIGTERM; returns (kill-to-exit s, how it ended, the scrape just
    before the signal), or None when the source ran out before the signal."""
    fresh(out)
    with Service(source, out, extra, source_flags) as svc:
        try:
            svc.wait_storing()
        except EndedEarly:
            return None
        time.sleep(delay_s)  # how long it runs at full load: the stop lands anywhere in it
        try:
            load = svc.scrape()
        except OSError as e:
            # The source may have ended during the wait: the metrics server is gone and the
            # process exits 0 on its own (a small input). Anything else is a failure.
            if _exits_cleanly(svc):
                return None
            raise BenchError(f"shovel's /metrics did not answer: {e}") from e
        stopped = svc.stop()
        ended = ended_cleanly(out, stopped, svc.log_text())
    if ended.reason == "end of source":
        return None
    if inp is not None:
        verify_prefix(inp, out, ended.committed_offset)
        if ended.committed_offset == inp.size:
            return None  # the whole file was read: the signal found no reader at work
    else:
        verify_generated(out, ended.committed_offset)
    return stopped.kill_to_exit_s, ended, load


def _exits_cleanly(svc: Service, timeout_s: float = 10.0) -> bool:
    """Whether the process exits 0 within `timeout_s` without a signal."""
    try:
        return svc.proc.wait(timeout_s) == 0
    except subprocess.TimeoutExpired:
        return False


def measure(
    inp: InputFile | None, workdir: Path, stops: int, extra: Sequence[str], seed: int
) -> StopResult:
    """`stops` stops of shovel reading `inp` (or the unpaced generator when None)."""
    source_flags: tuple[str, ...] = ()
    if inp is not None:
        source = str(inp.path)
        described, unit = f"file ({inp.size / MiB:,.0f} MiB)", "bytes"
    else:
        source, source_flags = "generate", ("--generate-rate", "0")
        described, unit = "generate (unpaced)", "records"
    rng = random.Random(seed)
    out = workdir / OUT_NAME
    samples: list[StopSample] = []
    ended = 0
    try:
        while len(samples) < stops:
            if ended > stops:
                raise BenchError(
                    f"the source ran out before the signal in {ended} runs: use a larger --size-mb"
                )
            delay = rng.uniform(0, MAX_EXTRA_DELAY_S)
            got = _one_stop(source, source_flags, inp, out, extra, delay_s=delay)
            if got is None:
                ended += 1
                progress(f"(the source ran out before the signal; run again; {ended} so far)")
                continue
            wall, how, load = got
            sample = StopSample(
                number=len(samples) + 1,
                delay_s=delay,
                kill_to_exit_s=wall,
                reported_s=how.stop_duration_s,
                committed_offset=how.committed_offset,
                inflight_bytes=load.value("shovel_storage_inflight_bytes"),
                queued_batches=load.value("shovel_queue_batches"),
            )
            samples.append(sample)
            progress(sample.line(stops, unit))
    finally:
        remove(out)
        remove(out.with_name(out.name + ".log"))
    return StopResult(described, unit, list(extra), samples, ended)
