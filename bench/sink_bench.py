"""The JetStream sink (issue 18): shovel copying a file into a stream, against a minimal
publisher with the same guarantees and the server's own ingest, all measured in the same run.

For each topology (one server with an R1 stream, then a 3-server cluster with an R3 stream)
it first asks the server the two questions the sink builds on (`nats-baseline probe`: is an
expected last subject sequence of 0 honoured, is a `Nats-Msg-Id` accepted inside an atomic
batch), then runs rounds. In each round, in an order that rotates from round to round, each
of these fills a fresh stream (file storage, `allow_atomic`, `allow_direct`) with the
`records` 100-byte lines of one input file:

  ingest      bench/nats-baseline ingest: core publishes, fire and forget (the server's
              ingest rate: what the stream takes in with nothing confirmed)
  baseline    bench/nats-baseline sink (Rust, the same async-nats as shovel): atomic batches
              of `batch`, one in flight, the expected last subject sequence on each batch's
              first message, every commit's PubAck checked before the next batch: the sink's
              guarantee with nothing around it
  pipelined   bench/nats-baseline publish: JetStream publishes, 256 in flight, every PubAck
              awaited, no guarantee against gaps: what atomic batches cost against pipelining
  shovel      python -m shovel --source FILE --sink nats://HOST:PORT,.../STREAM?subject=...

The Rust programs send 99-byte payloads (a line without its newline, as the sink does) with
the headers the sink puts on every message (SINK_HEADERS), so that every row sends the same
bytes.

Timing: every fill is timed the same way, from outside, not by the process itself: the
benchmark starts the process and polls the stream's message count every 20 ms on a
connection of its own until the stream holds every record. The rate is taken over the steady
part, from a fifth of the records stored to the last (as bench/nats_bench.py does for its
drains): the start-up (an interpreter, imports, a connection, the sink's read of the resume
point) is shown apart, with the end-to-end rate, so that the ratio compares publishing, not
starting. Over the same span, the CPU time of the publisher and of the servers is read from
/proc. Every fill is checked: the stream holds exactly `records` messages, and shovel's first
and last are the file's first and last lines, the last with the file's size as its offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from common import BenchError, MiB, progress, remove, verdict
from inputs import BLOCK_RECORDS, RECORD_BYTES, InputFile, prepare_input
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats_bench import STEADY_FROM, Consumers, Drain, build_baseline, figures_of, watch

# The tests' NATS servers (tests/helpers/natsservers.py) are the benchmark's too, as in
# bench/nats_bench.py.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tests.helpers.natsservers import Cluster, running_cluster  # noqa: E402

STREAM = "SINK"
SUBJECT = f"{STREAM}.records"
PROBE_PREFIX = f"{STREAM}.probe"
PAYLOAD_BYTES = RECORD_BYTES - 1  # a line without its newline
DEFAULT_RECORDS = 300_000
DEFAULT_ROUNDS = 3
DEFAULT_BATCH = 1000  # the sink's default (records per atomic batch)
DEFAULT_SERVERS = (1, 3)
PIPELINE_WINDOW = 256
MIN_RATIO = 0.8  # shovel against the baseline, median of rounds
# The headers the sink puts on every message (the last of a batch carries two more, which
# the baseline leaves out: two short headers per 1,000 messages).
SINK_HEADERS = ("--offset-header", "--msg-id")
KINDS = ("ingest", "baseline", "pipelined", "shovel")
LABELS = {
    "ingest": "server ingest (no acks)",
    "baseline": "baseline (atomic batches)",
    "pipelined": "pipelined (256 in flight)",
    "shovel": "shovel file -> JetStream",
}
CREATE_WAIT_S = 20.0
API_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Round:
    """One round on one topology: a fill by each kind, in the order they ran."""

    number: int
    fills: dict[str, Drain]

    def ratio(self, kind: str, to: str) -> float:
        """`kind`'s rate over `to`'s in this round."""
        return self.fills[kind].rate / self.fills[to].rate

    def lines(self, servers: int, records: int) -> list[str]:
        """The round as lines of text."""
        head = f"{servers} server(s), round {self.number} ({next(iter(self.fills))} first)"
        return [head] + [
            f"  {d.line()} | {self.ratio(d.kind, 'baseline'):.2f}x baseline, "
            f"{self.ratio(d.kind, 'ingest'):.2f}x ingest{_dropped(d, records)}"
            for d in self.fills.values()
        ]


def _dropped(d: Drain, records: int) -> str:
    """What the server dropped of a fire-and-forget fill (its ingest queue was full: core
    publishes have no flow control), in words."""
    if d.messages >= records:
        return ""
    return f" | stored {d.messages:,} of {records:,}: the server dropped the rest"


@dataclass(frozen=True, slots=True)
class Topology:
    """The rounds on one server (R1) or on a 3-server cluster (R3), and what the probe found."""

    servers: int
    facts: dict[str, object]  # nats-baseline probe's answer
    rounds: list[Round]

    @property
    def kinds(self) -> list[str]:
        """The kinds measured (shovel left out by --sink-without-shovel)."""
        return [k for k in KINDS if k in self.rounds[0].fills]

    def median_rate(self, kind: str) -> float:
        """Median over rounds of `kind`'s rate."""
        return statistics.median(r.fills[kind].rate for r in self.rounds)

    def median_ratio(self, kind: str, to: str) -> float:
        """Median over rounds of `kind`'s rate over `to`'s in the same round."""
        return statistics.median(r.ratio(kind, to) for r in self.rounds)

    def median_of(self, kind: str, attribute: str) -> float:
        """Median over rounds of one figure of `kind`'s fills."""
        return statistics.median(float(getattr(r.fills[kind], attribute)) for r in self.rounds)

    @property
    def name(self) -> str:
        """How lines name it."""
        return f"{self.servers} server{'s' if self.servers > 1 else ''} (R{self.servers})"

    def fact_lines(self) -> list[str]:
        """The probe's two answers, said in words."""
        zero = _dict(self.facts.get("expected_zero"))
        ids = _dict(self.facts.get("msg_id_in_batch"))
        honoured = "honoured" if zero.get("honoured") else "NOT honoured"
        lines = [
            f"{self.name}: Nats-Expected-Last-Subject-Sequence: 0 {honoured} (on an empty "
            f"subject: {_answer(zero.get('on_empty_subject'))}; on a subject with messages: "
            f"{_answer(zero.get('on_subject_with_messages'))})"
        ]
        if ids.get("accepted"):
            lines.append(
                f"{self.name}: Nats-Msg-Id inside an atomic batch accepted "
                f"({_answer(ids.get('answer'))}); the same batch sent again with the same ids: "
                f"{_answer(ids.get('same_ids_again'))}"
            )
        else:
            lines.append(
                f"{self.name}: Nats-Msg-Id inside an atomic batch REFUSED: "
                f"{_answer(ids.get('answer'))}"
            )
        return lines

    def summary(self) -> list[str]:
        """Medians and the verdict."""
        out = self.fact_lines()
        for kind in self.kinds:
            line = f"{self.name}: median {LABELS[kind]}: {self.median_rate(kind):,.0f} msg/s"
            if kind != "baseline":
                line += f", {self.median_ratio(kind, 'baseline'):.2f}x baseline"
            if kind != "ingest":
                line += f", {self.median_ratio(kind, 'ingest'):.2f}x ingest"
            line += (
                f"; CPU us/msg: client {self.median_of(kind, 'client_us'):.1f}, server "
                f"{self.median_of(kind, 'server_us'):.1f}; start-up "
                f"{self.median_of(kind, 'startup_s'):.2f} s"
            )
            out.append(line)
        if "shovel" in self.kinds:
            out.append(
                f"{self.name}: shovel/baseline, median of rounds: "
                f"{self.median_ratio('shovel', 'baseline'):.2f}x (target >= {MIN_RATIO}x): "
                f"{verdict(self.ok)}; shovel/ingest {self.median_ratio('shovel', 'ingest'):.2f}x"
            )
        return out

    @property
    def ok(self) -> bool:
        """Whether shovel reaches MIN_RATIO of the baseline."""
        return self.median_ratio("shovel", "baseline") >= MIN_RATIO


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _answer(answer: object) -> str:
    """A commit's answer in a few words: stored (its last sequence), or the server's error."""
    found = _dict(answer)
    error = _dict(found.get("error"))
    if error:
        return f"refused, {error.get('err_code')} {error.get('description')!r}"
    if "seq" in found:
        return f"stored, seq {found['seq']}"
    return f"answered {json.dumps(answer)}"


@dataclass(frozen=True, slots=True)
class SinkResult:
    """Every topology's rounds, and the verdicts."""

    title = "JetStream sink against a minimal publisher"  # the section's title in reports

    records: int
    batch: int
    shovel_flags: list[str]
    topologies: list[Topology]

    def lines(self) -> list[str]:
        """One block per round."""
        return [
            line
            for t in self.topologies
            for r in t.rounds
            for line in r.lines(t.servers, self.records)
        ]

    def summary(self) -> list[str]:
        """What was run, the probe's answers, the medians and the verdicts."""
        out = [
            f"{self.records:,} records of {RECORD_BYTES} bytes (payloads of {PAYLOAD_BYTES}), "
            f"batch {self.batch}, {len(self.topologies[0].rounds)} rounds per topology; the "
            f"Rust programs' headers per message: {', '.join(_header_names())}; rates over "
            "the steady part (a fifth of the records stored to the last, polled from "
            f"outside); shovel flags: {' '.join(self.shovel_flags) or '(defaults)'}",
        ]
        for t in self.topologies:
            out += t.summary()
        return out

    def targets(self) -> list[tuple[str, str, str, str]]:
        """(target, goal, measured, verdict) of each topology."""
        rows = []
        for t in self.topologies:
            if "shovel" not in t.kinds:
                continue
            measured = (
                f"{t.median_rate('shovel'):,.0f} msg/s, "
                f"{t.median_ratio('shovel', 'baseline'):.2f}x baseline "
                f"({t.median_rate('baseline'):,.0f}), "
                f"{t.median_ratio('shovel', 'ingest'):.2f}x the server's ingest "
                f"({t.median_rate('ingest'):,.0f})"
            )
            goal = f">= {MIN_RATIO}x baseline (atomic batches, every PubAck awaited)"
            rows.append((f"JetStream sink, {t.name}, median", goal, measured, verdict(t.ok)))
        return rows

    def figures(self) -> dict[str, object]:
        """The medians and the probe's answers, by topology."""
        found: dict[str, object] = {}
        for t in self.topologies:
            figures: dict[str, object] = {"facts": t.facts}
            for kind in t.kinds:
                figures[f"{kind}_rate"] = t.median_rate(kind)
                figures[f"{kind}_to_baseline"] = t.median_ratio(kind, "baseline")
                figures[f"{kind}_to_ingest"] = t.median_ratio(kind, "ingest")
            found[f"R{t.servers}"] = figures
        return found


def _header_names() -> list[str]:
    names = {"--offset-header": "Shovel-Offset", "--msg-id": "Nats-Msg-Id"}
    return [names[flag] for flag in SINK_HEADERS] or ["none"]


async def _api(nc: Client, subject: str, body: dict[str, object]) -> dict[str, object]:
    """A JetStream API request; its answer, or BenchError with the server's error."""
    answer = await nc.request(subject, json.dumps(body).encode(), timeout=API_TIMEOUT_S)
    found = json.loads(answer.data)
    if not isinstance(found, dict):
        raise BenchError(f"{subject}: not an object: {found!r}")
    return found


async def _fresh_stream(cluster: Cluster, replicas: int) -> None:
    """Deletes the stream if it exists and creates it again, file storage with atomic
    batches and direct gets (a raw API request: nats-py's StreamConfig has no allow_atomic).
    Retries while the cluster elects its leaders."""
    config = {
        "name": STREAM,
        "subjects": [f"{STREAM}.>"],
        "storage": "file",
        "num_replicas": replicas,
        "allow_atomic": True,
        "allow_direct": True,
    }
    nc = await cluster.connect()
    try:
        deadline = time.monotonic() + CREATE_WAIT_S
        while True:
            try:
                await _api(nc, f"$JS.API.STREAM.DELETE.{STREAM}", {})  # not found: no matter
                created = await _api(nc, f"$JS.API.STREAM.CREATE.{STREAM}", config)
                if "error" not in created:
                    return
                why = str(created["error"])
            except (nats.errors.Error, TimeoutError) as e:
                why = repr(e)
            if time.monotonic() > deadline:
                raise BenchError(f"stream {STREAM} not created: {why}")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _stream_state(js: JetStreamContext) -> tuple[int, int]:
    """(messages, last sequence) of the stream."""
    info = await js.stream_info(STREAM)
    return info.state.messages, info.state.last_seq


async def _stored_messages(js: JetStreamContext) -> int:
    return (await _stream_state(js))[0]


@dataclass(frozen=True, slots=True)
class Setup:
    """What every fill of a topology shares."""

    cluster: Cluster
    baseline: Path  # the baseline program
    inp: InputFile
    work: Path  # where logs go
    batch: int
    extra: Sequence[str]  # shovel flags


def _command(setup: Setup, kind: str) -> list[str]:
    """The process that fills the stream for `kind`."""
    servers, records = setup.cluster.urls, str(setup.inp.records)
    common = ["--server", servers, "--subject", SUBJECT, "--count", records]
    sized = [*common, "--payload-bytes", str(PAYLOAD_BYTES), *SINK_HEADERS]
    if kind == "ingest":
        return [str(setup.baseline), "ingest", *sized, "--stream", STREAM]
    if kind == "baseline":
        return [str(setup.baseline), "sink", *sized, "--batch", str(setup.batch)]
    if kind == "pipelined":
        return [str(setup.baseline), "publish", *sized, "--window", str(PIPELINE_WINDOW)]
    sink = f"nats://{servers}/{STREAM}?subject={SUBJECT}&batch={setup.batch}"
    return [
        sys.executable, "-m", "shovel", "--source", str(setup.inp.path), "--sink", sink,
        "--output-dir", str(setup.work / "shovel-state"), "--metrics-port", "0",
        "--status-interval-s", "0", "--log-level", "WARNING", *setup.extra,
    ]  # fmt: skip


def _line(path: Path, index: int) -> bytes:
    """Line `index` (0-based; -1: the last) of the input, without its newline."""
    with path.open("rb") as f:
        f.seek(index * RECORD_BYTES if index >= 0 else path.stat().st_size - RECORD_BYTES)
        return f.read(RECORD_BYTES)[:-1]


async def _check(cluster: Cluster, inp: InputFile, kind: str) -> None:
    """Raises BenchError unless the stream holds the records once each (and, for shovel,
    holds the file's first and last lines, the last with the file's size as its offset)."""
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        messages, last_seq = await _stream_state(js)
        # Fire and forget: the server drops what its ingest queue cannot hold.
        least = int(inp.records * STEADY_FROM) + 1 if kind == "ingest" else inp.records
        if not least <= messages == last_seq <= inp.records:
            raise BenchError(f"{kind}: {messages} messages, last seq {last_seq}, for {inp.records}")
        if kind != "shovel":
            return
        first, last = await js.get_msg(STREAM, 1), await js.get_msg(STREAM, inp.records)
        if first.data != _line(inp.path, 0) or last.data != _line(inp.path, -1):
            raise BenchError("shovel: the stream's first or last message is not the file's")
        offset = (last.headers or {}).get("Shovel-Offset")
        if offset != str(inp.size):
            raise BenchError(f"shovel: the last message's offset {offset!r}, not {inp.size}")
    finally:
        await nc.close()


def fill(setup: Setup, kind: str, number: int) -> Drain:
    """A fresh stream filled by `kind`'s process, timed and checked."""
    replicas = len(setup.cluster.servers)
    asyncio.run(_fresh_stream(setup.cluster, replicas))
    remove(setup.work / "shovel-state")
    os.sync()  # no fill pays for the writeback of the one before it
    log = setup.work / f"{kind}-{number}.log"
    command = _command(setup, kind)
    w = asyncio.run(
        watch(
            setup.cluster,
            setup.inp.records,
            lambda: Consumers([command], [log], ends_by_sigterm=False),
            _stored_messages,
            f"{kind} (round {number})",
        )
    )
    w.consumers.finish(stop=False)  # each exits by itself once it has done the file
    asyncio.run(_check(setup.cluster, setup.inp, kind))
    remove(log)
    return figures_of(w, kind, LABELS[kind], setup.inp.records)


def probe(setup: Setup) -> dict[str, object]:
    """nats-baseline probe on a fresh stream: the server's answers."""
    asyncio.run(_fresh_stream(setup.cluster, len(setup.cluster.servers)))
    asked = subprocess.run(
        [str(setup.baseline), "probe", "--server", setup.cluster.urls,
         "--subject-prefix", PROBE_PREFIX],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if asked.returncode != 0:
        raise BenchError(f"the probe failed: {asked.stderr}")
    found = json.loads(asked.stdout)
    if not isinstance(found, dict):
        raise BenchError(f"the probe answered {asked.stdout!r}")
    return found


def measure(
    workdir: Path,
    *,
    records: int,
    rounds: int,
    batch: int,
    servers: Sequence[int],
    with_shovel: bool,
    extra: Sequence[str],
) -> SinkResult:
    """The probe and the rounds on each topology; everything they leave in `workdir` is
    removed."""
    baseline = build_baseline()
    work = workdir / "sink"
    remove(work)
    work.mkdir()
    kinds = KINDS if with_shovel else tuple(k for k in KINDS if k != "shovel")
    topologies: list[Topology] = []
    try:
        size_mib = -(-records // BLOCK_RECORDS) * BLOCK_RECORDS * RECORD_BYTES / MiB
        inp, _ = prepare_input(work / "input.ndjson", size_mib)
        progress(f"input {inp.path}: {inp.records:,} records ({inp.size:,} bytes)")
        for count in servers:
            cluster_dir = work / f"servers-{count}"
            cluster_dir.mkdir()
            with running_cluster(cluster_dir, count) as cluster:
                setup = Setup(cluster, baseline, inp, work, batch, extra)
                facts = probe(setup)
                done: list[Round] = []
                for number in range(1, rounds + 1):
                    shift = (number - 1) % len(kinds)
                    fills: dict[str, Drain] = {}
                    for kind in kinds[shift:] + kinds[:shift]:
                        d = fill(setup, kind, number)
                        fills[kind] = d
                        progress(f"{count} server(s), round {number}: {d.line()}")
                    done.append(Round(number, fills))
                topologies.append(Topology(count, facts, done))
                for line in topologies[-1].fact_lines():
                    progress(line)
            with contextlib.suppress(OSError):
                remove(cluster_dir)
    finally:
        remove(work)
    return SinkResult(inp.records, batch, list(extra), topologies)


def space_needed(records: int, servers: Sequence[int]) -> int:
    """Bytes a run needs at most: the input and a stream (with headers) on each server."""
    stream = records * (RECORD_BYTES + 150)
    return records * RECORD_BYTES + stream * max(servers) + 64 * MiB
