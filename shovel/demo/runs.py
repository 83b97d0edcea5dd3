"""Running the demonstration: each cell's runs as child processes, stopped at the same seeded
moments, watched from outside (the side file and the store's files) and counted afterwards.

A run: start the child; wait until it has read its first records; wait the run's stop delay
(the same for every cell) and, with the Python client, until it has a write in flight; send the
cell's signal; sample until the process exits (or kill it when it does not, and say so). A
SIGKILL cell then starts the same child again, which resumes from its checkpoint and runs the
(finite) source to its end at full speed.

A NATS cell's run reads a stream of its own on the demo's NATS server (natsfeed.py), filled
with a backlog before the child starts; after the exit the server is asked what was
acknowledged and what it still delivers (natstally.py). A JetStream store's run (a client of
SINK_CLIENTS) publishes the generator's records into a stream of its own on the same server
(sinkstream.py), sampled while it runs and read back after the exit: lost is what the reader
read and the stream does not hold.

No wait on a run that has started has a fixed end (stall.py): a child is killed as hung only
when, after its signal, it has stored nothing more for STOP_STALL_S, and a restart only when it
has read and stored nothing for RESTART_STALL_S. A count that could not be completed (a killed
restart, a drain of the NATS consumer or a read-back of a stream that stalled, a run the demo
could not measure) says so in `count_incomplete`, and what it could not count is uncounted,
never lost.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shovel.demo.accounting import LiveCount, Tally, resume_offset, tally
from shovel.demo.child import SINK_CLIENTS, TASK_CLIENTS
from shovel.demo.natsfeed import NatsFeed
from shovel.demo.natstally import NatsFigures, nats_tally
from shovel.demo.progress import PROGRESS_FILE, read_progress
from shovel.demo.sinkstream import Held, SinkStream
from shovel.demo.stall import StallClock

# Under the output directory: a directory per cell, in it one per run (its files and logs).
RUNS_DIR = "runs"
# The default of messages in each NATS run's stream.
NATS_MESSAGES = 40_000
# The stop comes this long after the first records were read (drawn per run from the seed).
STOP_AFTER_S = (0.5, 1.5)
SAMPLE_S = 0.01
# Timeline samples kept from before the signal (all after it are kept).
KEEP_BEFORE_S = 0.5
# Bounds: a child that does not start reading is killed and reported.
START_WAIT_S = 30.0
# With a client whose writes are tasks (TASK_CLIENTS), how long past its stop moment a run
# waits for a write in flight (with no latency there may seldom be one) before it is stopped
# anyway.
INFLIGHT_WAIT_S = 2.0
# A child that after its signal neither exits nor stores more of what it read for this long is
# hung: killed and reported. A restart that reads and stores nothing for this long is too.
STOP_STALL_S = 15.0
RESTART_STALL_S = 15.0
# How often a restart's progress is looked at.
RESTART_LOOK_S = 0.1
# A SIGKILL cell's source: enough records that the kill comes before its end.
KILL_SOURCE_S = STOP_AFTER_S[1] + 2.0


@dataclass(frozen=True, slots=True)
class Cell:
    """A pattern over a client (of the output directory, or of a JetStream stream: SINK_CLIENTS),
    stopped by a signal (SIGKILL: then restarted)."""

    pattern: str
    client: str
    kill_restart: bool = False
    # "generator", or "nats": a NATS JetStream stream through shovel's NATS source.
    source: str = "generator"

    @property
    def key(self) -> str:
        """A name for files and JSON."""
        key = f"{self.pattern}.{self.client}" + (".kill-restart" if self.kill_restart else "")
        return key + (".nats" if self.source == "nats" else "")

    @property
    def sink(self) -> bool:
        """Whether its client stores into a JetStream stream."""
        return self.client in SINK_CLIENTS

    @property
    def signal(self) -> signal.Signals:
        """What stops it."""
        if self.kill_restart:
            return signal.SIGKILL
        return signal.SIGINT if self.pattern == "asyncio-run" else signal.SIGTERM


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the user chose (see cli.py)."""

    runs: int
    rate: float
    latency_ms: float
    seed: int
    output_dir: Path
    jobs: int
    # Messages in each NATS run's stream (a backlog read as fast as the child can).
    nats_messages: int = NATS_MESSAGES

    def stop_delays(self) -> list[float]:
        """Run i of every cell is stopped this long after reading starts."""
        rng = random.Random(self.seed)
        return [round(rng.uniform(*STOP_AFTER_S), 3) for _ in range(self.runs)]

    @property
    def kill_source_records(self) -> int:
        """Records in a SIGKILL cell's (finite) source."""
        return int(self.rate * KILL_SOURCE_S)


@dataclass(slots=True)
class RunResult:
    """One run, as measured."""

    cell: str
    run: int
    stop_after_s: float
    signal: str
    exit_codes: list[int] = field(default_factory=list)
    # From the signal to the process's exit (None: no signal was sent).
    stop_to_exit_s: float | None = None
    # After its signal the process stored nothing more for STOP_STALL_S, did not exit, and was
    # killed.
    hung: bool = False
    # A Python traceback in the child's stderr.
    traceback: bool = False
    # What went wrong with the run itself (it never started reading, ended early ...).
    problem: str | None = None
    # With a client of TASK_CLIENTS: whether a write was in flight just before the signal was
    # sent, and how many (its tasks started and not finished).
    inflight_at_stop: bool | None = None
    writes_in_flight_at_stop: int | None = None
    # Records read when the SIGKILL came (SIGKILL cells).
    read_at_kill: int | None = None
    tally: Tally | None = None
    # Why the run's count is incomplete (its tally's `uncounted` records are then neither lost
    # nor kept as far as the demo knows; no tally: it could not count at all). None: complete.
    count_incomplete: str | None = None
    # (seconds from the signal, records read, records stored), sampled from outside.
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    # NATS cells: the server's figures, and (seconds from the signal, messages acknowledged).
    nats: NatsFigures | None = None
    acked_timeline: list[tuple[float, int]] = field(default_factory=list)
    # JetStream store cells: what the stream held after the run, as read back.
    held: Held | None = None

    def as_json(self) -> dict[str, object]:
        """For results.json."""
        out = asdict(self)
        out["timeline"] = [[round(t, 4), r, s] for t, r, s in self.timeline]
        out["acked_timeline"] = [[round(t, 4), a] for t, a in self.acked_timeline]
        return out


def _read_end(directory: Path) -> int:
    """How far the run in `directory` has read, by its side file (0: not at all)."""
    progress = read_progress(directory / PROGRESS_FILE)
    return progress.read_end if progress else 0


def _child_env() -> dict[str, str]:
    # The child's settings come from its flags alone.
    return {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}


class _Child:
    """A `python -m shovel.demo.child` process, in a session of its own (a Ctrl-C at the
    terminal reaches only the demo, which ends it)."""

    def __init__(
        self,
        cell: Cell,
        config: DemoConfig,
        directory: Path,
        run: int,
        *,
        restart: bool = False,
        nats_source: str | None = None,
        sink: str | None = None,
    ) -> None:
        # A restart runs the rest of the source at full speed.
        rate = "0" if restart else str(config.rate)
        args = [sys.executable, "-m", "shovel.demo.child", "--pattern", cell.pattern]
        args += ["--client", cell.client, "--output-dir", str(directory), "--rate", rate]
        args += ["--latency-ms", str(config.latency_ms), "--seed", str(config.seed * 1000 + run)]
        if cell.kill_restart:
            args += ["--count", str(config.kill_source_records)]
        if nats_source is not None:
            args += ["--nats-source", nats_source]
        if sink is not None:
            args += ["--sink", sink]
        self.log = directory / ("restart.log" if restart else "child.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=_child_env(),
                start_new_session=True,
            )

    def end(self) -> None:
        """Kills it if it still runs (used on the way out)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Runs:
    """Runs cells, a few at a time, and collects their results."""

    def __init__(self, config: DemoConfig, nats_url: str | None = None) -> None:
        self.config = config
        # The demo's NATS server (HOST:PORT), for the NATS cells.
        self.nats_url = nats_url
        self._delays = config.stop_delays()
        self._children: set[_Child] = set()

    def run_all(
        self, cells: list[Cell], done: Callable[[RunResult], None]
    ) -> dict[str, list[RunResult]]:
        """Every run of every cell, each cell's in run order; `done` is called as each
        finishes. A cell's runs are started one after the other, before the next cell's, so
        that the cells finish one by one (the demo says so as each does) instead of all near
        the end. On the way out (Ctrl-C included) the children still running are killed
        first."""
        results: dict[str, list[RunResult]] = {cell.key: [] for cell in cells}
        pool = ThreadPoolExecutor(self.config.jobs)
        try:
            jobs = [
                pool.submit(self._one, cell, i) for cell in cells for i in range(self.config.runs)
            ]
            for job in as_completed(jobs):
                result = job.result()
                results[result.cell].append(result)
                done(result)
        finally:
            self._end_children()
            pool.shutdown(wait=True, cancel_futures=True)
            self._end_children()
        for runs in results.values():
            runs.sort(key=lambda r: r.run)
        return results

    def _end_children(self) -> None:
        for child in list(self._children):
            child.end()

    @contextmanager
    def _running(
        self,
        cell: Cell,
        directory: Path,
        result: RunResult,
        *,
        restart: bool = False,
        nats_source: str | None = None,
        sink: str | None = None,
    ) -> Iterator[_Child]:
        """A child for the length of the block, ended on the way out (killed if it still
        runs); its exit code, and whether its log holds a traceback, go into `result`."""
        child = _Child(
            cell,
            self.config,
            directory,
            result.run,
            restart=restart,
            nats_source=nats_source,
            sink=sink,
        )
        self._children.add(child)
        try:
            yield child
        finally:
            child.end()
            self._children.discard(child)
        result.exit_codes.append(child.proc.returncode)
        result.traceback |= "Traceback" in child.log.read_text(errors="replace")

    def _one(self, cell: Cell, run: int) -> RunResult:
        """A run; whatever goes wrong in it is its problem, and the other runs go on."""
        directory = self.config.output_dir / RUNS_DIR / cell.key / str(run)
        directory.mkdir(parents=True)
        result = RunResult(cell.key, run, self._delays[run], cell.signal.name)
        try:
            if cell.source == "nats":
                self._one_nats(cell, directory, result)
            elif cell.sink:
                self._one_sink(cell, directory, result)
            else:
                self._one_generator(cell, directory, result)
        except Exception as e:
            # The demo's own measuring failed (the child's failures are problems of their
            # own): whatever was not counted is unknown.
            result.count_incomplete = f"the run could not be measured: {e!r}"
        return result

    def _one_generator(self, cell: Cell, directory: Path, result: RunResult) -> None:
        """A run over the generator."""
        with self._running(cell, directory, result) as child:
            self._stop(cell, child, directory, result, LiveCount(directory, cell.client).now)
        read = _read_end(directory)
        resume_at = None
        if cell.kill_restart and result.problem is None:
            result.read_at_kill = read
            with self._running(cell, directory, result, restart=True) as restart:
                finished = wait_restart(restart.proc, directory, cell.client)
            if not finished:
                result.problem = (
                    f"the restart read and stored nothing for {RESTART_STALL_S:g} s, and was killed"
                )
                # Ended before it read the source to its end: what it had not stored, a later
                # restart would read again.
                resume_at = resume_offset(directory, cell.client)
            # A restart that failed early may have read less than the first run had.
            read = max(read, _read_end(directory))
        result.tally = tally(directory, cell.client, read, resume_at)
        if result.tally.uncounted:
            result.count_incomplete = (
                f"the restart was killed before it finished: {result.tally.uncounted:,} "
                "records it read and had not stored would be read again by a later restart"
            )

    def _one_nats(self, cell: Cell, directory: Path, result: RunResult) -> None:
        """A run over its own NATS stream (see the module docstring)."""
        assert self.nats_url is not None
        stream = f"DEMO_{cell.pattern}_{result.run}".replace("-", "_")
        feed = NatsFeed(self.nats_url, stream, self.config.nats_messages)
        try:
            feed.start()
            with self._running(cell, directory, result, nats_source=feed.source) as child:
                moments = self._stop(
                    cell, child, directory, result, LiveCount(directory, cell.client).now
                )
            exited_at = moments[1] if moments is not None else time.monotonic()
            feed.stop_sampling()
            view = feed.server_view()
            deliverable = feed.deliverable(exited_at)
            read = _read_end(directory)
            result.tally, result.nats = nats_tally(directory, read, view, deliverable)
            result.count_incomplete = deliverable.stalled
            if moments is not None:
                signalled = moments[0]
                result.acked_timeline = [
                    (t - signalled, a)
                    for t, a in feed.acked_samples
                    if t >= signalled - KEEP_BEFORE_S
                ]
        finally:
            feed.close()

    def _one_sink(self, cell: Cell, directory: Path, result: RunResult) -> None:
        """A run into its own JetStream stream (see the module docstring)."""
        assert self.nats_url is not None
        name = f"SINK_{cell.pattern}_{cell.client}_{result.run}".replace("-", "_")
        stream = SinkStream(self.nats_url, name)
        try:
            stream.start()
            with self._running(cell, directory, result, sink=stream.sink) as child:
                self._stop(cell, child, directory, result, stream.now)
            result.held = held = stream.read_back(directory)
            result.tally = tally(directory, cell.client, _read_end(directory), unseen=held.unseen)
            result.count_incomplete = held.incomplete
        finally:
            stream.close()

    def _stop(
        self,
        cell: Cell,
        child: _Child,
        directory: Path,
        result: RunResult,
        stored_now: Callable[[], int],
    ) -> tuple[float, float] | None:
        """Waits for the stop moment, signals, samples until the exit (`stored_now`: the
        records stored so far); returns when it was signalled and when it exited (None: it was
        never signalled)."""
        progress_path = directory / PROGRESS_FILE
        samples: list[tuple[float, int, int]] = []
        last_read = 0

        def sample() -> int:
            nonlocal last_read
            p = read_progress(progress_path)
            inflight = 0
            if p is not None:
                last_read, inflight = p.read_end, p.inflight
            samples.append((time.monotonic(), last_read, stored_now()))
            return inflight

        started = time.monotonic()
        while last_read == 0:
            sample()
            if child.proc.poll() is not None:
                result.problem = "the child exited before reading anything"
                return None
            if time.monotonic() - started > START_WAIT_S:
                result.problem = f"the child read nothing in {START_WAIT_S:g}s"
                return None
            time.sleep(SAMPLE_S)
        stop_at = time.monotonic() + result.stop_after_s
        # With a client whose writes are tasks, the stop comes while a write is in flight: the
        # moment every pattern must survive, and the same condition for each of them.
        while True:
            inflight = sample()
            if child.proc.poll() is not None:
                result.problem = "the child ended before its stop"
                return None
            now = time.monotonic()
            if now >= stop_at and (
                cell.client not in TASK_CLIENTS or inflight > 0 or now >= stop_at + INFLIGHT_WAIT_S
            ):
                break
            time.sleep(SAMPLE_S)
        if cell.client in TASK_CLIENTS:
            result.inflight_at_stop = inflight > 0
            result.writes_in_flight_at_stop = inflight
        signalled = time.monotonic()
        child.proc.send_signal(cell.signal)
        # The stop gets somewhere while what was read and not stored yet shrinks (a child that
        # reads on as fast as it stores is not stopping).
        stopping = StallClock(STOP_STALL_S)
        while child.proc.poll() is None:
            _, read_last, stored_last = samples[-1]
            if not stopping.moving(stored_last - read_last):
                result.hung = True
                child.proc.kill()
                child.proc.wait()
                break
            sample()
            time.sleep(SAMPLE_S)
        exited = time.monotonic()
        sample()
        result.stop_to_exit_s = round(exited - signalled, 4)
        result.timeline = [
            (t - signalled, r, s) for t, r, s in samples if t >= signalled - KEEP_BEFORE_S
        ]
        return signalled, exited


def wait_restart(proc: subprocess.Popen[bytes], directory: Path, client: str) -> bool:
    """Waits for a restart to exit while it reads or stores (False: it stalled, and runs)."""
    stored = LiveCount(directory, client)
    going = StallClock(RESTART_STALL_S)
    while going.moving(_read_end(directory), stored.now()):
        try:
            proc.wait(RESTART_LOOK_S)
        except subprocess.TimeoutExpired:
            continue
        return True
    return False
