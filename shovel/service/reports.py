"""The run's entries in OUTPUT/last-stop.json (laststop.py keeps the format): at start, the
previous run's report is exported and this run marks itself as going on; at the end, its own
report replaces that marker. None of it is worth failing a run for: every write is bounded in
time and runs off the event loop, and a problem is logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from shovel._threads import off_loop
from shovel.service.laststop import (
    REPORT_FILE,
    ReportError,
    StopReport,
    describe,
    read_report,
    running_marker,
    write_final_report,
    write_report,
)
from shovel.service.metrics import Metrics
from shovel.service.state import RunState

# The service speaks as "shovel", as the runner does: these lines were its own.
log = logging.getLogger("shovel")

# How long the running marker may take to write at start before the run goes on without it.
MARKER_WRITE_S = 5.0
# How long the final stop report may take to write: it comes out of the 5 s margin before the
# orchestrator's kill.
REPORT_WRITE_S = 1.0


async def take_over(output_dir: Path, metrics: Metrics, state: RunState) -> None:
    """Exports the previous run's stop report and marks this run as going on."""
    try:
        previous = await off_loop(read_report, output_dir)
    except ReportError as e:
        log.warning("ignoring %s: %s", output_dir / REPORT_FILE, e)
        previous = None
    if previous is not None:
        metrics.show_last_stop(previous)
        if previous.running or previous.exit_code:
            log.warning("last stop: %s", describe(previous))
        else:
            log.info("last stop: %s", describe(previous))
    marker = running_marker(state.started_at)
    if await _bounded(output_dir, write_report, (output_dir, marker), MARKER_WRITE_S):
        state.marker = marker


async def save_final(output_dir: Path, state: RunState, report: StopReport) -> None:
    """Replaces this run's marker with its report (see laststop.write_final_report)."""
    if state.marker is None:
        log.warning(
            "not writing %s: this run could not mark it as its own at start",
            output_dir / REPORT_FILE,
        )
        return
    await _bounded(
        output_dir, write_final_report, (output_dir, report, state.marker), REPORT_WRITE_S
    )


async def _bounded(
    output_dir: Path, write: Callable[..., object], args: tuple[object, ...], limit_s: float
) -> bool:
    """Runs `write(*args)` off the loop, bounded in time; a failure is logged, not raised.
    Returns whether it completed."""
    try:
        await asyncio.wait_for(off_loop(write, *args), limit_s)
    except TimeoutError:
        log.warning(
            "writing %s took over %.0fs: going on without it", output_dir / REPORT_FILE, limit_s
        )
    except OSError as e:
        log.warning("cannot write %s: %s", output_dir / REPORT_FILE, e)
    else:
        return True
    return False
