"""The JetStream sink (issue 18) in a real `python -m shovel`: records from a file, a followed
file and the generator go to a subject of a stream through SIGTERM and SIGKILL at random
moments, restarts, the stream's leader killed, a restart after the duplicate window, a second
writer, permanent errors, records too long for the server, lines across two reads of the file,
and a stop deadline that cannot be met. After each, the subject holds every record exactly
once, in order, byte-exact, each with its source offset.

The sizes are what CI affords on 2 cores (each test well under a minute): RECORDS records,
about 14 MB. Issue 18's 1 GB class (some 15 million records) is the bench's and a manual
run's: SHOVEL_SINK_RECORDS sets RECORDS (the read-back holds the whole subject in memory and
reads some 30,000 messages a second, so allow for it). Each moment of a signal is a number
of messages in the stream (or added by the run), drawn from SHOVEL_SINK_SEED (printed with a
failure; random unless given): what a test asserts does not depend on timing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shovel.service.laststop import read_report
from tests.helpers import (
    WAIT_S,
    Shovel,
    assert_clean_stderr,
    generated,
    handles_sigterm,
    read_checkpoint,
    wait_until,
    write_input,
)
from tests.helpers.faults import summary
from tests.helpers.natsink import (
    SinkMessage,
    assert_holds,
    last_offset,
    line_offsets,
    make_stream,
    read_subject,
    sink_url,
    stream_leader,
    subject_count,
    wait_for_count,
    wait_for_forgotten_ids,
)
from tests.helpers.natsservers import Cluster, running_cluster

RECORDS = int(os.environ.get("SHOVEL_SINK_RECORDS", "200000"))
SEED = int(os.environ.get("SHOVEL_SINK_SEED", str(random.randrange(1 << 30))))
STREAM = "SINK"
SUBJECT = "SINK.records"
# Each interrupted run ends with one of these; both come up in every test that draws them.
SIGNALS = (signal.SIGTERM, signal.SIGKILL)
# Every run a test started: killed at its end if it still runs (a test that failed).
STARTED: list[Shovel] = []


@pytest.fixture(autouse=True)
def _no_run_left() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().__exit__(None, None, None)


class Runs:
    """shovel runs one after another from one source into SUBJECT of STREAM on `cluster`, each
    with a log of its own."""

    def __init__(self, cluster: Cluster, tmp_path: Path, source: list[str]) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.out = tmp_path / "out"
        self.args = [
            *source,
            "--sink", sink_url(cluster, STREAM, SUBJECT),
            "--output-dir", str(self.out),
            "--metrics-port", "0",
            "--status-interval-s", "0",
            # The reader runs at most a few MiB ahead of the stream: a SIGTERM, which delivers
            # everything read, ends a run part-way through the input rather than at its end.
            "--read-chunk-bytes", "256KiB",
            "--queue-max-batches", "4",
            "--max-inflight-bytes", "1MiB",
        ]  # fmt: skip
        self.n = 0

    def start(self, shutdown_timeout_s: float = 10) -> Shovel:
        """A run, once it handles SIGTERM (a SIGTERM before would kill it: not what is
        tested)."""
        self.n += 1
        args = [*self.args, "--shutdown-timeout-s", str(shutdown_timeout_s)]
        s = Shovel(args, self.tmp_path / f"run{self.n}.log")
        STARTED.append(s)
        wait_until(
            lambda: handles_sigterm(s.proc.pid) or s.proc.poll() is not None,
            what=f"run {self.n} to handle SIGTERM",
        )
        return s

    def count(self) -> int:
        return subject_count(self.cluster, STREAM, SUBJECT)

    def reach(self, s: Shovel, k: int) -> int:
        """Waits until the subject holds at least `k` messages while `s` runs; returns how
        many it holds."""
        n = wait_for_count(
            self.cluster,
            STREAM,
            SUBJECT,
            lambda n: n >= k or s.proc.poll() is not None,
            f"{k} messages on {SUBJECT}",
        )
        assert n >= k, f"run {self.n} exited {s.proc.poll()} at {n} messages:\n{s.stderr}"
        return n

    def stop(self, s: Shovel, sig: int) -> None:
        """Ends a run that still runs with `sig`. SIGTERM: exit 0 with nothing undelivered, and
        the stream's last message carries the offset the run committed."""
        assert s.proc.poll() is None, f"run {self.n} exited before the signal:\n{s.stderr}"
        s.signal(sig)
        code = s.wait()
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
            return
        assert code == 0, s.stderr
        assert_clean_stderr(s.stderr)
        done = summary(s.stderr)
        assert done.undelivered == 0, s.stderr
        assert last_offset(self.cluster, STREAM, SUBJECT) == done.committed_offset, s.stderr

    def interrupt_at(self, k: int, sig: int) -> None:
        """A run, ended by `sig` once the subject holds `k` messages (more than it holds)."""
        assert self.count() < k
        s = self.start()
        self.reach(s, k)
        self.stop(s, sig)

    def interrupt_after(self, more: int, sig: int) -> None:
        """A run, ended by `sig` once it has added `more` messages to the subject."""
        self.interrupt_at(self.count() + more, sig)

    def finish(self) -> str:
        """A run to the end of a file or generate:N: exit 0, clean; returns its log."""
        s = self.start()
        code = s.wait()
        assert code == 0, s.stderr
        assert_clean_stderr(s.stderr)
        return s.stderr

    def assert_no_local_records(self) -> None:
        """With a sink, the output directory holds no records and no checkpoint."""
        assert not (self.out / "segments").exists()
        assert read_checkpoint(self.out) is None


def draw(rng: random.Random, count: int, low: int, high: int) -> list[tuple[int, int]]:
    """`count` moments, each a number of messages in low..high-1 that a run adds before it is
    ended, with its signal: SIGTERM and SIGKILL at least once each (when count >= 2)."""
    signals = [SIGNALS[i % 2] for i in range(count)]
    rng.shuffle(signals)
    return [(rng.randrange(low, high), sig) for sig in signals]


@pytest.fixture
def rng() -> random.Random:
    print(f"SHOVEL_SINK_SEED={SEED}")
    return random.Random(SEED)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    """One JetStream server with stream SINK (subjects SINK.>, atomic batches allowed)."""
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(make_stream(cluster, STREAM))
        yield cluster


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """RECORDS varied newline-terminated records (68 bytes each on average)."""
    path = tmp_path_factory.mktemp("input") / "in.txt"
    return path, write_input(path, RECORDS, seed=SEED)


# --- through stops and crashes --------------------------------------------------------------


@pytest.mark.parametrize("servers", [1, 3])
def test_a_file_through_stops_crashes_and_a_lost_leader_lands_exactly_once(
    tmp_path: Path, rng: random.Random, input_file: tuple[Path, bytes], servers: int
) -> None:
    """One server, and a 3-server cluster with the stream on all 3 (R3): four runs ended by
    SIGTERM or SIGKILL at random moments, then a run to the end of the file; in the cluster,
    the stream's leader is killed (SIGKILL) during that last run, the writing goes on through
    the other two, and it is started again. The subject holds every record once, in order,
    byte-exact, with its offset."""
    path, data = input_file
    with running_cluster(tmp_path, servers) as cluster:
        asyncio.run(make_stream(cluster, STREAM, replicas=servers))
        runs = Runs(cluster, tmp_path, ["--source", str(path)])
        for more, sig in draw(rng, 4, RECORDS // 50, RECORDS // 10):
            runs.interrupt_after(more, sig)
        if servers == 1:
            runs.finish()
        else:
            before = runs.count()
            s = runs.start()
            at = runs.reach(s, before + rng.randrange(RECORDS // 50, RECORDS // 8))
            leader = stream_leader(cluster, STREAM)
            leader.kill()
            # Written through the new leader, while the old one is away.
            runs.reach(s, min(RECORDS, at + RECORDS // 10))
            leader.start()
            code = s.wait()
            assert code == 0, s.stderr
            assert_clean_stderr(s.stderr)
        assert_holds(read_subject(cluster, STREAM, SUBJECT), data, line_offsets(data))
    runs.assert_no_local_records()


def test_the_generator_through_crashes_lands_exactly_once(
    server: Cluster, tmp_path: Path, rng: random.Random
) -> None:
    """generate:N, ended by SIGKILL and SIGTERM at random moments, then run to N: records 0..N-1
    once each, in order, the offset after record i being i+1."""
    source = ["--source", f"generate:{RECORDS}", "--generate-rate", "0"]
    runs = Runs(server, tmp_path, source)
    for more, sig in draw(rng, 3, RECORDS // 50, RECORDS // 5):
        runs.interrupt_after(more, sig)
    runs.finish()
    messages = read_subject(server, STREAM, SUBJECT)
    assert_holds(messages, generated(0, RECORDS), range(1, RECORDS + 1))


def test_a_followed_file_through_a_crash_and_a_rotation_lands_exactly_once(
    server: Cluster, tmp_path: Path, rng: random.Random, input_file: tuple[Path, bytes]
) -> None:
    """A followed file gets a third of the records; a run is killed (SIGKILL) part-way
    through them. While nothing runs, the file is rotated (renamed to app.log.1) and a new
    app.log gets the second third; a run reads the rest of the old file, then the new one,
    and is stopped (SIGTERM) part-way. The last third is appended; a run takes it, and is
    stopped once the subject holds every record: each once, in order, byte-exact, with its
    offset (a running count across the files)."""
    _, data = input_file
    lines = data.splitlines(keepends=True)
    third = len(lines) // 3
    parts = [b"".join(lines[:third]), b"".join(lines[third : 2 * third])]
    parts.append(b"".join(lines[2 * third :]))
    log = tmp_path / "app.log"
    log.write_bytes(parts[0])
    follow = ["--source", str(log), "--follow", "--follow-poll-ms", "20"]
    runs = Runs(server, tmp_path, [*follow, "--follow-rotated-quiet-ms", "200"])

    runs.interrupt_at(rng.randrange(third // 10, third // 2), signal.SIGKILL)
    assert runs.count() < third, "the whole first third was written before the kill"
    log.rename(tmp_path / "app.log.1")
    log.write_bytes(parts[1])
    runs.interrupt_at(rng.randrange(third + third // 10, third * 19 // 10), signal.SIGTERM)
    with log.open("ab") as f:
        f.write(parts[2])
    s = runs.start()
    runs.reach(s, len(lines))
    runs.stop(s, signal.SIGTERM)
    assert runs.count() == len(lines)
    assert_holds(read_subject(server, STREAM, SUBJECT), data, line_offsets(data))


def test_a_restart_after_the_duplicate_window_is_exact(
    tmp_path: Path, rng: random.Random, input_file: tuple[Path, bytes]
) -> None:
    """The stream forgets message ids after 1 s. A run is killed (SIGKILL) mid-file; once the
    server has forgotten every id the run sent (an id sent after the kill is no longer taken
    for a duplicate), a restart writes the rest: what it resumes from comes from the stream,
    not from the server's deduplication, so nothing is written twice."""
    path, data = input_file
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(make_stream(cluster, STREAM, duplicate_window_s=1.0))
        runs = Runs(cluster, tmp_path, ["--source", str(path)])
        runs.interrupt_at(rng.randrange(RECORDS // 10, RECORDS * 8 // 10), signal.SIGKILL)
        wait_for_forgotten_ids(cluster, f"{STREAM}.probe")
        runs.finish()
        assert_holds(read_subject(cluster, STREAM, SUBJECT), data, line_offsets(data))


def test_a_second_writer_on_the_subject_is_refused(
    server: Cluster, tmp_path: Path, rng: random.Random
) -> None:
    """Two runs of the endless generator into one subject: one of them (whichever is second
    to commit on top of the other's writing) exits 1 saying another writer is there; the other
    goes on, and once stopped (SIGTERM), the subject holds records 0..n-1 once each, in
    order."""
    source = ["--source", "generate", "--generate-rate", "2000"]
    runs = Runs(server, tmp_path, source)
    first = runs.start()
    runs.reach(first, rng.randrange(200, 2000))
    # Another host, as it were: an output directory of its own.
    (tmp_path / "second").mkdir()
    second = Runs(server, tmp_path / "second", source).start()
    wait_until(
        lambda: first.proc.poll() is not None or second.proc.poll() is not None,
        what="one of the two writers to exit",
    )
    loser, survivor = (first, second) if first.proc.poll() is not None else (second, first)
    assert loser.wait() == 1, loser.stderr
    assert "another writer" in loser.stderr, loser.stderr
    assert_clean_stderr(loser.stderr)
    # The other one goes on writing.
    runs.reach(survivor, runs.count() + 500)
    runs.stop(survivor, signal.SIGTERM)
    messages = read_subject(server, STREAM, SUBJECT)
    n = len(messages)
    assert_holds(messages, generated(0, n), range(1, n + 1))


# --- single runs: permanent errors, records the server cannot take, lines across reads -------


def run_once(
    sink: str, tmp_path: Path, *args: str, timeout_s: float = WAIT_S, name: str = "log"
) -> tuple[int, str]:
    """One run of shovel into `sink` (`args`: its source and options; output directory
    tmp_path/out; its log tmp_path/`name`) to its end: its exit code and log."""
    out = str(tmp_path / "out")
    s = Shovel(["--sink", sink, "--output-dir", out, "--metrics-port", "0", *args], tmp_path / name)
    STARTED.append(s)
    return s.wait(timeout_s), s.stderr


def refused(tmp_path: Path, sink: str) -> str:
    """A run into `sink` that must exit 1; returns its log."""
    code, err = run_once(sink, tmp_path, "--source", "generate:1000")
    assert code == 1, err
    assert_clean_stderr(err)
    return err


def last_error(log: str) -> str:
    """The last ERROR line of a log."""
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert errors, log
    return errors[-1]


def test_a_stream_that_does_not_exist_is_exit_1(server: Cluster, tmp_path: Path) -> None:
    err = refused(tmp_path, sink_url(server, "NOPE", "NOPE.records"))
    assert "stream NOPE does not exist on the NATS servers" in last_error(err), err
    assert subject_count(server, STREAM, SUBJECT) == 0


def test_a_subject_outside_the_stream_is_exit_1(server: Cluster, tmp_path: Path) -> None:
    err = refused(tmp_path, sink_url(server, STREAM, "OTHER.records"))
    why = "subject OTHER.records is not in stream SINK (its subjects: SINK.>)"
    assert why in last_error(err), err


PASSWORD = "pw-7f3a91"
# Everything but publishing to the stream's subjects.
DENIED = '{publish: {deny: ["SINK.>"]}}'


def test_a_user_without_publish_permission_is_exit_1(tmp_path: Path) -> None:
    """The user may use the JetStream API but not publish to the stream's subjects: exit 1
    with the server's reason (in the stop report too), nothing in the stream, and the password
    in no line."""
    users = [
        "authorization {",
        "  users = [",
        "    {user: admin, password: admin}",
        f"    {{user: reader, password: {PASSWORD}, permissions: {DENIED}}}",
        "  ]",
        "}",
    ]
    with running_cluster(tmp_path, 1, config=users) as cluster:
        cluster.client_options = {"user": "admin", "password": "admin"}
        asyncio.run(make_stream(cluster, STREAM))
        sink = sink_url(cluster, STREAM, SUBJECT, user=f"reader:{PASSWORD}")
        err = refused(tmp_path, sink)
        why = "the NATS server denied the publish: Permissions Violation for Publish to "
        why += '"SINK.records"'
        assert why in last_error(err), err
        assert subject_count(cluster, STREAM, SUBJECT) == 0
        assert PASSWORD not in err
        report = read_report(tmp_path / "out")
        assert report is not None
        assert report.exit_code == 1
        assert why in (report.detail or ""), report


def test_records_over_max_payload_go_to_rejected(tmp_path: Path) -> None:
    """The server takes messages of at most 16 KiB: records far over it are kept whole in
    rejected/ under their offsets, those well under it are written, and the run exits 0. (The
    file is one read: see the next two tests for a line across reads and a last line over the
    limit.)"""
    lines = []
    for i in range(3000):
        size = {700: 40_000, 1500: 100_000, 2998: 20_000}.get(i, 8_000 if i % 500 == 1 else 90)
        lines.append(b"%06d " % i + bytes(48 + (i * 7 + k) % 75 for k in range(size)) + b"\n")
    data = b"".join(lines)
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    with running_cluster(tmp_path, 1, config=["max_payload: 16384"]) as cluster:
        asyncio.run(make_stream(cluster, STREAM))
        code, log = run_once(sink_url(cluster, STREAM, SUBJECT), tmp_path, "--source", str(path))
        assert code == 0, log
        assert_clean_stderr(log)
        messages = read_subject(cluster, STREAM, SUBJECT)
    long = {700, 1500, 2998}
    assert_holds(messages, *kept_records(messages, lines, long))
    offsets = line_offsets(data)
    rejected = {p.name: p.read_bytes() for p in (tmp_path / "out" / "rejected").iterdir()}
    assert rejected == {f"{offsets[i] - len(lines[i]):020d}.rec": lines[i] for i in long}


def kept_records(
    messages: list[SinkMessage], lines: list[bytes], rejected: set[int]
) -> tuple[bytes, list[int]]:
    """The records of `lines` but the `rejected` ones, and the offset each of their messages
    is to carry: the offset after its record, or, for a record that rejected lines follow, the
    offset after them (the sink puts it on the record before when that one is not sent yet:
    either is where a restart resumes)."""
    offsets = line_offsets(b"".join(lines))
    kept = [i for i in range(len(lines)) if i not in rejected]
    expected = []
    for j, i in enumerate(kept):
        after = i + 1
        while after in rejected:
            after += 1
        carried = offsets[after - 1]
        got = messages[j].offset if j < len(messages) else None
        expected.append(carried if got == carried else offsets[i])
    return b"".join(lines[i] for i in kept), expected


def test_a_line_across_two_reads_is_one_message(server: Cluster, tmp_path: Path) -> None:
    """A line that begins in one read of the file and ends in the next is one record, as is
    any such line of a file larger than a read (--read-chunk-bytes, 1 MiB unless told)."""
    data = b"a" * 4000 + b"\n" + b"b" * 200 + b"\n" + b"c\n"
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    sink = sink_url(server, STREAM, SUBJECT)
    code, log = run_once(sink, tmp_path, "--source", str(path), "--read-chunk-bytes", "4096")
    assert code == 0, log
    assert_clean_stderr(log)
    assert_holds(read_subject(server, STREAM, SUBJECT), data, line_offsets(data))


def test_a_last_line_over_the_limit_is_rejected_and_the_run_ends(
    server: Cluster, tmp_path: Path
) -> None:
    """The file's last line is over --max-record-bytes: it is kept in rejected/, every other
    line is written, and the run ends at the end of the file (exit 0) on its own. Only a
    message carries an offset into the stream, so the offset past that last line may not be
    there: a restart then reads the line again and keeps it again, once, and stores nothing
    twice. The committed offset each run reports is the one in the stream."""
    lines = [b"%04d short\n" % i for i in range(100)] + [b"L" * 5000 + b"\n"]
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(lines))
    sink = sink_url(server, STREAM, SUBJECT)
    # A few records: a second is plenty, 20 allow for a loaded machine.
    args = ("--source", str(path), "--max-record-bytes", "1000")
    code, log = run_once(sink, tmp_path, *args, timeout_s=20)
    assert code == 0, log
    assert_clean_stderr(log)
    assert summary(log).committed_offset == last_offset(server, STREAM, SUBJECT), log
    messages = read_subject(server, STREAM, SUBJECT)
    assert_holds(messages, *kept_records(messages, lines, {100}))
    rejected_dir = tmp_path / "out" / "rejected"
    kept = {f"{1100:020d}.rec": lines[-1]}
    assert {p.name: p.read_bytes() for p in rejected_dir.iterdir()} == kept

    code, log = run_once(sink, tmp_path, *args, timeout_s=20, name="again")
    assert code == 0, log
    done = summary(log)
    assert done.read == 0, log
    assert done.committed_offset == last_offset(server, STREAM, SUBJECT), log
    assert read_subject(server, STREAM, SUBJECT) == messages
    assert {p.name: p.read_bytes() for p in rejected_dir.iterdir()} == kept


# --- stops that cannot deliver ----------------------------------------------------------------


def test_a_deadline_that_cannot_be_met_is_exit_3_and_the_restart_completes(
    server: Cluster, tmp_path: Path, rng: random.Random, input_file: tuple[Path, bytes]
) -> None:
    """The server is frozen (SIGSTOP) mid-file; SIGTERM with a 1 s shutdown timeout: what was
    read cannot be acknowledged, so exit 3 with the undelivered count, soon after the deadline.
    The server thawed, a restart writes the rest: every record once, in order."""
    path, data = input_file
    runs = Runs(server, tmp_path, ["--source", str(path)])
    s = runs.start(shutdown_timeout_s=1)
    runs.reach(s, rng.randrange(RECORDS // 10, RECORDS * 6 // 10))
    proc = server.servers[0].proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        s.signal(signal.SIGTERM)
        started = time.monotonic()
        code = s.wait(timeout_s=WAIT_S)
        took_s = time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGCONT)
    assert code == 3, s.stderr
    assert_clean_stderr(s.stderr)
    # 1 s of deadline, and room for a loaded machine.
    assert took_s < 4, f"the stop took {took_s:.1f}s:\n{s.stderr}"
    done = summary(s.stderr)
    assert done.undelivered > 0, s.stderr
    report = read_report(runs.out)
    assert report is not None
    assert (report.exit_code, report.undelivered) == (3, done.undelivered), report
    runs.finish()
    assert_holds(read_subject(server, STREAM, SUBJECT), data, line_offsets(data))


def test_a_stream_without_atomic_batches_gets_batches_of_one(
    tmp_path: Path, input_file: tuple[Path, bytes]
) -> None:
    """Not an error: a WARNING, and every record written once, in order."""
    _, data = input_file
    part = b"".join(data.splitlines(keepends=True)[:3000])
    path = tmp_path / "in.txt"
    path.write_bytes(part)
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(make_stream(cluster, STREAM, atomic=False))
        log = Runs(cluster, tmp_path, ["--source", str(path)]).finish()
        assert " WARNING " in log, log
        assert "allow_atomic" in log, log
        assert_holds(read_subject(cluster, STREAM, SUBJECT), part, line_offsets(part))
