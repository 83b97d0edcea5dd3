"""NATS JetStream: shovel's source against a minimal consumer and the server's own ingest, all
measured in the same run.

Each round fills a fresh stream (R1 on one server, or R3 on a 3-server cluster) with
`messages` messages through the baseline program's publisher (JetStream publishes, 256 in
flight, every acknowledgement awaited): the server's ingest rate. Then, in an order that
rotates from round to round, it drains that stream through a fresh durable consumer each:

  baseline    bench/nats-baseline (Rust, the same async-nats as shovel): fetch a batch, one
              JSON line per message, append, one fdatasync, acknowledge every message and
              wait for every confirmation before the next fetch
  bare        the same without storage (what the server and a fast client cost alone)
  bare-3      three of those on one consumer: what this server delivers on these cores to
              consumers that cost little (its capacity here, which three replicas should reach)
  shovel-1    one shovel replica
  shovel-3    three shovel replicas on one consumer

A drain is timed from just before its processes start until the consumer's acknowledgement
floor reaches the last message (everything stored durably and acknowledged), polled every
20 ms on a connection of its own. Its rate is taken over the steady part, from the floor at
a fifth of the messages to the last (the processes' start-up, about 0.3 s for shovel, is
shown apart, with the end-to-end rate); over the same span, the CPU time of the consumer
processes and of the servers is read from /proc, and the cores busy with other work from
/proc/stat (on a shared machine, other work shows there): together they tell where the limit
is. Every drain that stores is checked: each message stored exactly once
(across the three replicas' outputs, too).

After the rounds, one shovel replica drains a stream of each of `rss_messages` backlog sizes:
its peak RSS (VmHWM) must not grow with the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import nats.errors
import nats.js.errors
from common import BenchError, MiB, progress, remove, verdict
from nats.js import JetStreamContext
from rss import FLAT_TOLERANCE

# The tests' NATS servers (tests/helpers/natsservers.py) are the benchmark's too.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.helpers.natsservers import Cluster, create_stream, running_cluster  # noqa: E402

STREAM = "BENCH"
SUBJECT = f"{STREAM}.m"
BASELINE_PACKAGE = "nats-baseline"
DEFAULT_MESSAGES = 500_000
DEFAULT_ROUNDS = 3
DEFAULT_RSS_MESSAGES = (100_000, 1_000_000)
DEFAULT_BATCH = 256  # shovel's default batch (shovel/sources/nats/url.py); the baseline's too
PAYLOAD_BYTES = 100
PUBLISH_WINDOW = 256
MIN_RATE = 80_000.0  # one replica, messages per second
MIN_RATIO = 0.8  # one replica against the baseline
MIN_THREE_RATIO = 0.9  # three replicas against the server's capacity here (bare-3)
DISTURBED_CORES = 0.25  # other work above this during a drain is worth a warning
# The steady part of a drain starts once this share of the messages is acknowledged: three
# replicas' interpreters start one after another, and the first acknowledgement can come
# before the last of them has started.
STEADY_FROM = 0.2
POLL_S = 0.02
DRAIN_WAIT_S = 600.0
EXIT_WAIT_S = 60.0
KINDS = ("baseline", "bare", "bare-3", "shovel-1", "shovel-3")
LABELS = {
    "publish": "server ingest (publish)",
    "baseline": "baseline (Rust, stored)",
    "bare": "baseline, no storage",
    "bare-3": "3 x baseline, no storage",
    "shovel-1": "shovel, 1 replica",
    "shovel-3": "shovel, 3 replicas",
}
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Drain:
    """One drain of the stream through one consumer (or, for bench/sink_bench.py, one fill of
    the stream by a publisher: its count is then the stream's messages, not the acknowledgement
    floor). Its rate and CPU figures cover the same span, the steady part: from the count
    reaching STEADY_FROM of the messages to the last message counted (by then every process
    has started, connected and bound the consumer, or begun to publish)."""

    kind: str
    label: str  # how lines name it
    messages: int
    wall_s: float  # processes started to the count at the last message
    startup_s: float  # processes started to the first message counted
    steady_start_s: float  # processes started to the start of the steady part
    steady_messages: int  # counted over the steady part
    client_cpu_s: float  # the client processes' user + sys, over the steady part
    server_cpu_s: float  # the servers' user + sys, over the steady part
    busy: float  # share of all cores busy with anything, over the steady part
    rss_mib: float  # the highest peak RSS of the consumer processes
    floors: list[tuple[float, int]] = field(repr=False)  # (s since start, count) samples

    @property
    def steady_s(self) -> float:
        """The steady part's length."""
        return self.wall_s - self.steady_start_s

    @property
    def rate(self) -> float:
        """Messages per second over the steady part."""
        return self.steady_messages / self.steady_s

    @property
    def client_us(self) -> float:
        """Consumer CPU time per message, microseconds."""
        return self.client_cpu_s / self.steady_messages * 1e6

    @property
    def server_us(self) -> float:
        """Server CPU time per message, microseconds."""
        return self.server_cpu_s / self.steady_messages * 1e6

    @property
    def client_cores(self) -> float:
        """Cores the consumer processes used."""
        return self.client_cpu_s / self.steady_s

    @property
    def server_cores(self) -> float:
        """Cores the servers used."""
        return self.server_cpu_s / self.steady_s

    @property
    def others_cores(self) -> float:
        """Cores busy with anything but the servers and the consumer processes: the
        benchmark's own polling, and other work on a shared machine."""
        return max(0.0, self.busy * CORES - self.client_cores - self.server_cores)

    def line(self) -> str:
        """The drain as one line of text."""
        return (
            f"{self.label:<24} {self.rate:>9,.0f} msg/s (start-up {self.startup_s:.2f} s, "
            f"end to end {self.messages / self.wall_s:>7,.0f} msg/s) | CPU us/msg: client "
            f"{self.client_us:4.1f}, server {self.server_us:4.1f} | cores: client "
            f"{self.client_cores:.2f}, server {self.server_cores:.2f}, other work "
            f"{self.others_cores:.2f} (of {CORES}) | peak RSS {self.rss_mib:5.1f} MiB"
        )


@dataclass(frozen=True, slots=True)
class Round:
    """One fill of the stream and its drains."""

    number: int
    publish_rate: float
    drains: dict[str, Drain]  # in the order they ran

    def ratio(self, kind: str, to: str = "baseline") -> float:
        """`kind`'s rate over `to`'s in this round."""
        return self.drains[kind].rate / self.drains[to].rate

    def lines(self) -> list[str]:
        """The round as lines of text."""
        head = (
            f"round {self.number} ({next(iter(self.drains))} first): "
            f"{LABELS['publish']} {self.publish_rate:,.0f} msg/s"
        )
        return [head] + [
            f"  {d.line()} | {self.ratio(d.kind):.2f}x baseline" for d in self.drains.values()
        ]


@dataclass(frozen=True, slots=True)
class NatsResult:
    """The rounds, the backlog sweep, and the medians the targets apply to."""

    title = "NATS JetStream against a minimal consumer"  # the section's title in reports

    messages: int
    batch: int
    servers: int
    shovel_flags: list[str]
    rounds: list[Round]
    sweep: list[Drain]  # one shovel replica per backlog size, smallest first

    def median_rate(self, kind: str) -> float:
        """Median over rounds of `kind`'s rate (`publish`: the server's ingest)."""
        if kind == "publish":
            return statistics.median(r.publish_rate for r in self.rounds)
        return statistics.median(r.drains[kind].rate for r in self.rounds)

    def median_ratio(self, kind: str, to: str = "baseline") -> float:
        """Median over rounds of `kind`'s rate over `to`'s in the same round."""
        return statistics.median(r.ratio(kind, to) for r in self.rounds)

    def median_of(self, kind: str, attribute: str) -> float:
        """Median over rounds of one figure of `kind`'s drains."""
        return statistics.median(float(getattr(r.drains[kind], attribute)) for r in self.rounds)

    @property
    def one_ok(self) -> bool:
        """Whether one replica reaches the rate and the ratio targets."""
        rate_ok = self.median_rate("shovel-1") >= MIN_RATE
        return rate_ok and self.median_ratio("shovel-1") >= MIN_RATIO

    @property
    def three_ok(self) -> bool:
        """Whether three replicas reach what the server delivers here (three consumers that
        store nothing, on the same cores), within MIN_THREE_RATIO."""
        return self.median_ratio("shovel-3", "bare-3") >= MIN_THREE_RATIO

    def limit(self) -> str:
        """Where the limit is: the cores the server used while it delivered to three
        consumers that cost little, and while it delivered to shovel's three replicas."""
        parts = [
            f"{LABELS[kind]}: server {self.median_of(kind, 'server_cores'):.2f} cores, "
            f"consumers {self.median_of(kind, 'client_cores'):.2f}"
            for kind in ("bare-3", "shovel-3")
        ]
        return f"where the limit is ({CORES} cores): " + "; ".join(parts)

    def disturbance(self) -> str:
        """How much other work shared the cores during the drains (the benchmark's polling,
        about 0.05 cores, included): the load average at the start says nothing of it."""
        drains = [d for r in self.rounds for d in r.drains.values()] + self.sweep
        worst = max(drains, key=lambda d: d.others_cores)
        typical = statistics.median(d.others_cores for d in drains)
        line = (
            f"other work during the drains: median {typical:.2f} cores, at most "
            f"{worst.others_cores:.2f} ({worst.label})"
        )
        if worst.others_cores > DISTURBED_CORES:
            line += ": the drains that shared the cores with it ran slower than they would alone"
        return line

    @property
    def rss_low(self) -> float:
        """The lowest peak RSS of the backlog sweep."""
        return min(d.rss_mib for d in self.sweep)

    @property
    def rss_high(self) -> float:
        """The highest peak RSS of the backlog sweep."""
        return max(d.rss_mib for d in self.sweep)

    @property
    def flat_ok(self) -> bool:
        """Whether the peak RSS stays within the tolerance across backlog sizes."""
        return self.rss_high <= self.rss_low * (1 + FLAT_TOLERANCE)

    def lines(self) -> list[str]:
        """One block per round, then the backlog sweep."""
        out = [line for r in self.rounds for line in r.lines()]
        out += [f"backlog {d.messages:>9,}: {d.line()}" for d in self.sweep]
        return out

    def summary(self) -> list[str]:
        """Medians, where the limit is, and the verdicts."""
        sizes = ", ".join(f"{d.messages:,}" for d in self.sweep)
        out = [
            f"{self.messages:,} messages of {PAYLOAD_BYTES} bytes, {self.servers} server(s), "
            f"batch {self.batch}, {len(self.rounds)} rounds; shovel flags: "
            f"{' '.join(self.shovel_flags) or '(defaults)'}",
        ]
        for kind in ("publish", *KINDS):
            line = f"median {LABELS[kind]}: {self.median_rate(kind):,.0f} msg/s"
            if kind not in ("publish", "baseline"):
                line += f", {self.median_ratio(kind):.2f}x baseline"
            if kind != "publish":
                line += (
                    f"; CPU us/msg: client {self.median_of(kind, 'client_us'):.1f}, server "
                    f"{self.median_of(kind, 'server_us'):.1f}; cores: client "
                    f"{self.median_of(kind, 'client_cores'):.2f}, server "
                    f"{self.median_of(kind, 'server_cores'):.2f}, other work "
                    f"{self.median_of(kind, 'others_cores'):.2f}"
                )
            out.append(line)
        out.append(self.disturbance())
        out += [
            f"one replica >= {MIN_RATE:,.0f} msg/s and >= {MIN_RATIO}x baseline: "
            f"{verdict(self.one_ok)}",
            f"three replicas against the server's capacity here (3 x baseline, no storage), "
            f"median of rounds: {self.median_ratio('shovel-3', 'bare-3'):.2f}x (target >= "
            f"{MIN_THREE_RATIO}x): {verdict(self.three_ok)}",
            self.limit(),
            f"peak RSS of one replica at backlogs of {sizes} messages: {self.rss_low:.1f} to "
            f"{self.rss_high:.1f} MiB, flat within {FLAT_TOLERANCE:.0%}: {verdict(self.flat_ok)}",
        ]
        return out

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each target."""
        one = (
            f"{self.median_rate('shovel-1'):,.0f} msg/s, "
            f"{self.median_ratio('shovel-1'):.2f}x baseline"
        )
        three = (
            f"{self.median_rate('shovel-3'):,.0f} msg/s, "
            f"{self.median_ratio('shovel-3', 'bare-3'):.2f}x the server's capacity here "
            f"({self.median_rate('bare-3'):,.0f})"
        )
        return [
            (
                "NATS, 1 replica, median",
                f">= {MIN_RATE:,.0f} msg/s and >= {MIN_RATIO}x baseline",
                one,
                verdict(self.one_ok),
            ),
            (
                "NATS, 3 replicas on one consumer, median",
                f">= {MIN_THREE_RATIO}x what the server delivers here (3 x baseline, no storage)",
                three,
                verdict(self.three_ok),
            ),
            (
                "NATS, peak RSS flat across backlogs",
                f"largest within {FLAT_TOLERANCE:.0%} of smallest",
                f"{self.rss_low:.1f} to {self.rss_high:.1f} MiB",
                verdict(self.flat_ok),
            ),
        ]

    def figures(self) -> dict[str, object]:
        """The figures the targets apply to."""
        found: dict[str, object] = {"publish_rate": self.median_rate("publish")}
        for kind in KINDS:
            found[f"{kind}_rate"] = self.median_rate(kind)
            found[f"{kind}_ratio"] = self.median_ratio(kind)
            found[f"{kind}_others_cores"] = self.median_of(kind, "others_cores")
        found["rss_mib"] = {d.messages: d.rss_mib for d in self.sweep}
        return found


def build_baseline() -> Path:
    """Builds the baseline program (release, locked); returns its path. The first build takes
    a minute or two; later ones reuse it."""
    progress(f"building {BASELINE_PACKAGE} (cargo build --release) ...")
    try:
        built = subprocess.run(
            [
                "cargo", "build", "--release", "--locked", "--quiet",
                "--package", BASELINE_PACKAGE, "--message-format", "json",
            ],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise BenchError("cargo not found: the NATS baseline is built with it") from None
    if built.returncode != 0:
        raise BenchError(f"building {BASELINE_PACKAGE} failed:\n{built.stderr}")
    for line in built.stdout.splitlines():
        artifact = json.loads(line)
        if artifact.get("executable") and artifact["target"]["name"] == BASELINE_PACKAGE:
            return Path(artifact["executable"])
    raise BenchError(f"cargo built no {BASELINE_PACKAGE} executable")


def _cpu_s(pid: int) -> float:
    """A process's user + sys time so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime, stime


def _peak_rss_mib(pid: int) -> float:
    """A process's peak RSS since it started (VmHWM): its own, not its parent's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


class Consumers:
    """The processes of one drain, their logs, and what /proc says of them while they run."""

    def __init__(
        self, commands: list[list[str]], logs: list[Path], *, ends_by_sigterm: bool
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOVEL_")}
        self._logs: list[IO[bytes]] = [log.open("wb") for log in logs]
        self.log_paths = logs
        self.commands = commands
        self.procs = [
            subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
            for cmd, log in zip(commands, self._logs, strict=True)
        ]
        self.cpu_s = [0.0] * len(self.procs)
        self.rss_mib = [0.0] * len(self.procs)
        self.stopped = False  # sent SIGTERM
        self.ends_by_sigterm = ends_by_sigterm  # no handler for it (the baseline)

    def look(self) -> None:
        """Reads each running process's CPU time and peak RSS. Both only grow: a process that
        has exited (a zombie has no memory to show) keeps what the last look found."""
        for i, p in enumerate(self.procs):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.cpu_s[i] = max(self.cpu_s[i], _cpu_s(p.pid))
                self.rss_mib[i] = max(self.rss_mib[i], _peak_rss_mib(p.pid))

    def exited(self) -> bool:
        """Whether every process has exited."""
        return all(p.poll() is not None for p in self.procs)

    def failed(self) -> str | None:
        """The log of a process that exited with an error, if one did (the baseline has no
        handler for SIGTERM: that it ends by it is no error once it was sent)."""
        fine = (None, 0, -signal.SIGTERM) if self.stopped and self.ends_by_sigterm else (None, 0)
        for p, cmd, log in zip(self.procs, self.commands, self.log_paths, strict=True):
            if p.poll() not in fine:
                return f"{' '.join(cmd)} exited {p.returncode}:\n{log.read_text()}"
        return None

    def finish(self, stop: bool) -> None:
        """Stops them with SIGTERM (`stop`) or waits for them to exit (a process that exits on
        its own is reaped with wait4, for its exact CPU time); raises BenchError when one
        failed."""
        self.stopped = stop
        try:
            for i, p in enumerate(self.procs):
                if stop:
                    p.send_signal(signal.SIGTERM)
                elif p.returncode is None:
                    _, status, usage = os.wait4(p.pid, 0)
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.cpu_s[i] = usage.ru_utime + usage.ru_stime
            for p in self.procs:
                try:
                    p.wait(EXIT_WAIT_S)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:
            self.close_logs()
        if (why := self.failed()) is not None:
            raise BenchError(why)

    def kill(self) -> None:
        """Kills them all and reaps them (a drain that failed)."""
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.close_logs()

    def close_logs(self) -> None:
        """Closes the log files (the processes keep their own descriptors)."""
        for log in self._logs:
            log.close()


@dataclass(slots=True)
class Watched:
    """What a drain's watch saw: the processes, the floor's samples, and the CPU figures at
    the start of the steady part and at the end."""

    consumers: Consumers
    floors: list[tuple[float, int]] = field(default_factory=list)
    client_at_steady: float = 0.0
    server_at_steady: float = 0.0
    ticks_at_steady: tuple[int, int] = (0, 0)
    server_at_end: float = 0.0
    ticks_at_end: tuple[int, int] = (0, 0)


async def watch(
    cluster: Cluster,
    count: int,
    start: Callable[[], Consumers],
    counted: Callable[[JetStreamContext], Awaitable[int]],
    what: str,
) -> Watched:
    """Starts a run's processes and polls `counted` (a drain's acknowledgement floor, a
    fill's stream messages) until it reaches `count`, or until the processes have all exited
    (a publisher whose messages the server dropped in part ends below `count`); the processes
    are still running then, unless they exit on their own. The end figures are those of the
    last poll that found the count grown."""
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        servers = [s.proc.pid for s in cluster.servers if s.proc is not None]
        started = time.monotonic()
        w = Watched(start())
        try:
            while True:
                w.consumers.look()
                # Asked before the count: a count read after every process has exited is final.
                exited = w.consumers.exited()
                floor = await counted(js)
                now = time.monotonic()
                steady = _steady_floor(count)
                if floor >= steady and not any(f >= steady for _, f in w.floors):
                    w.client_at_steady = sum(w.consumers.cpu_s)
                    w.server_at_steady = sum(_cpu_s(pid) for pid in servers)
                    w.ticks_at_steady = _machine_ticks()
                if floor > max((f for _, f in w.floors[-1:]), default=0):
                    w.server_at_end = sum(_cpu_s(pid) for pid in servers)
                    w.ticks_at_end = _machine_ticks()
                w.floors.append((now - started, floor))
                if (why := w.consumers.failed()) is not None:
                    raise BenchError(why)
                if floor >= count or exited:
                    break
                if now - started > DRAIN_WAIT_S:
                    raise BenchError(f"{what}: not done in {DRAIN_WAIT_S:g} s")
                await asyncio.sleep(POLL_S)
            w.consumers.look()
        except BaseException:
            w.consumers.kill()
            raise
        return w
    finally:
        await nc.close()


def _steady_floor(count: int) -> int:
    """The acknowledgement floor at which a drain's steady part starts."""
    return max(1, int(count * STEADY_FROM))


def _stored(path: Path) -> Iterator[int]:
    """The sequences of the records in a file, or in an output directory's segments."""
    files = sorted((path / "segments").glob("*.seg")) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as lines:
            for line in lines:
                yield json.loads(line)["seq"]


def _check(outputs: Sequence[Path], count: int, what: str) -> None:
    """Raises BenchError unless the outputs hold every message 1..count once."""
    seen: Counter[int] = Counter()
    for out in outputs:
        seen.update(_stored(out))
    twice = sum(1 for n in seen.values() if n > 1)
    missing = count - sum(1 for s in seen if 1 <= s <= count)
    if twice or missing or len(seen) != count:
        raise BenchError(f"{what}: {missing} messages not stored, {twice} stored twice")


@dataclass(frozen=True, slots=True)
class Setup:
    """What every fill and drain of a run shares."""

    cluster: Cluster
    baseline: Path  # the baseline program
    work: Path  # where outputs and logs go
    batch: int
    extra: Sequence[str]  # shovel flags


def drain(setup: Setup, kind: str, consumer: str, count: int) -> Drain:
    """Drains the stream through a new consumer with `kind`'s processes; checks what they
    stored, then removes it."""
    cluster, work, batch = setup.cluster, setup.work, setup.batch
    replicas = 3 if kind.endswith("-3") else 1
    outputs = [work / f"{consumer}-{i}" for i in range(replicas)]
    logs = [work / f"{consumer}-{i}.log" for i in range(replicas)]
    for out in outputs:
        remove(out)
    os.sync()  # no drain pays for the writeback of the one before it
    if not kind.startswith("shovel"):
        command = [
            str(setup.baseline), "drain", "--server", cluster.urls, "--stream", STREAM,
            "--consumer", consumer, "--count", str(count), "--batch", str(batch),
            "--output", str(outputs[0]),
        ]  # fmt: skip
        commands = [command + (["--no-storage"] if kind.startswith("bare") else [])] * replicas
    else:
        source = cluster.source(STREAM, consumer, f"&batch={batch}")
        commands = [
            [
                sys.executable, "-m", "shovel", "--source", source, "--output-dir", str(out),
                "--metrics-port", "0", "--status-interval-s", "0", "--log-level", "WARNING",
                *setup.extra,
            ]
            for out in outputs
        ]  # fmt: skip

    async def floor(js: JetStreamContext) -> int:
        try:
            info = await js.consumer_info(STREAM, consumer, timeout=2)
        except nats.js.errors.NotFoundError:
            return 0
        return info.ack_floor.stream_seq if info.ack_floor is not None else 0

    w = asyncio.run(
        watch(
            cluster,
            count,
            lambda: Consumers(commands, logs, ends_by_sigterm=not kind.startswith("shovel")),
            floor,
            consumer,
        )
    )
    # Three processes on one consumer do not know when it is drained: they are stopped.
    w.consumers.finish(stop=replicas > 1 or kind.startswith("shovel"))
    if not kind.startswith("bare"):
        _check(outputs, count, f"{kind} ({consumer})")
    for path in (*outputs, *logs):
        remove(path)
    return figures_of(w, kind, LABELS[kind], count)


def figures_of(w: Watched, kind: str, label: str, count: int) -> Drain:
    """The figures of a watched run that counted to `count` (or stopped short of it: its
    messages are then what it counted, up to the poll that found the last of them)."""
    final = w.floors[-1][1]
    end_t = next(t for t, f in w.floors if f >= final)
    first_t = next(t for t, f in w.floors if f > 0)
    steady_t, steady_floor = next((t, f) for t, f in w.floors if f >= _steady_floor(count))
    busy = w.ticks_at_end[0] - w.ticks_at_steady[0]
    total = w.ticks_at_end[1] - w.ticks_at_steady[1]
    return Drain(
        kind=kind,
        label=label,
        messages=final,
        wall_s=end_t,
        startup_s=first_t,
        steady_start_s=steady_t,
        steady_messages=final - steady_floor,
        client_cpu_s=sum(w.consumers.cpu_s) - w.client_at_steady,
        server_cpu_s=w.server_at_end - w.server_at_steady,
        busy=busy / total if total else 0.0,
        rss_mib=max(w.consumers.rss_mib),
        floors=w.floors,
    )


async def _empty_stream(cluster: Cluster, replicas: int) -> None:
    """Deletes the stream (with its consumers) if it exists, and creates it again."""
    nc = await cluster.connect()
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(STREAM)
    finally:
        await nc.close()
    await create_stream(cluster, STREAM, replicas)


def fill(setup: Setup, count: int) -> float:
    """A fresh stream with `count` messages; returns the publisher's rate (first publish to
    last acknowledgement)."""
    asyncio.run(_empty_stream(setup.cluster, len(setup.cluster.servers)))
    published = subprocess.run(
        [
            str(setup.baseline), "publish", "--server", setup.cluster.urls, "--subject", SUBJECT,
            "--count", str(count), "--payload-bytes", str(PAYLOAD_BYTES),
            "--window", str(PUBLISH_WINDOW),
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if published.returncode != 0:
        raise BenchError(f"publishing failed: {published.stderr}")
    figures = json.loads(published.stdout)
    return float(figures["messages"]) / float(figures["elapsed_s"])


def measure(
    workdir: Path,
    *,
    messages: int,
    rounds: int,
    rss_messages: Sequence[int],
    batch: int,
    servers: int,
    extra: Sequence[str],
) -> NatsResult:
    """The rounds, then the backlog sweep; everything they leave in `workdir` is removed."""
    baseline = build_baseline()
    work = workdir / "nats"
    remove(work)
    work.mkdir()
    done: list[Round] = []
    sweep: list[Drain] = []
    try:
        with running_cluster(work, servers) as cluster:
            setup = Setup(cluster, baseline, work, batch, extra)
            for number in range(1, rounds + 1):
                publish_rate = fill(setup, messages)
                progress(f"round {number}: published {messages:,} at {publish_rate:,.0f} msg/s")
                shift = (number - 1) % len(KINDS)
                drains: dict[str, Drain] = {}
                for kind in KINDS[shift:] + KINDS[:shift]:
                    d = drain(setup, kind, f"{kind}-{number}", messages)
                    drains[kind] = d
                    progress(f"  {d.line()}")
                done.append(Round(number, publish_rate, drains))
            for count in sorted(rss_messages):
                fill(setup, count)
                d = drain(setup, "shovel-1", f"sweep-{count}", count)
                sweep.append(d)
                progress(f"backlog {count:,}: {d.line()}")
    finally:
        remove(work)
    return NatsResult(messages, batch, servers, list(extra), done, sweep)


def space_needed(messages: int, rss_messages: Sequence[int]) -> int:
    """Bytes a run needs at most: the stream and three outputs of its largest fill."""
    largest = max(messages, *rss_messages)
    return largest * (PAYLOAD_BYTES + 100) * 4 + 64 * MiB
