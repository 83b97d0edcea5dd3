"""The NATS JetStream source in a real `python -m shovel`: a bad source is a usage error, and
against a real server: every message stored once and acknowledged only once durable, a crash
between the checkpoint and the acknowledgement, a stream or a consumer that was made again,
consumers shovel cannot use, and stops with the server gone, silent, or past the deadline."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from shovel.service.laststop import read_report
from shovel.sources.identity import NatsOrigin, decode
from tests.helpers import (
    Shovel,
    assert_clean_stderr,
    free_port,
    http_get,
    metric,
    read_checkpoint,
    run_shovel,
    wait_until,
)
from tests.helpers.faults import FaultyShovel, summary
from tests.helpers.natsservers import (
    Cluster,
    ack_floor,
    assert_exactly,
    consumer_info,
    create_stream,
    decode_ranges,
    on_servers,
    publish,
    running_cluster,
)

# --- a bad source -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nats://127.0.0.1/S", "needs ?consumer=NAME"),
        ("nats://127.0.0.1/S?consumer=c&batch=0", "batch must be a whole number"),
    ],
)
def test_bad_nats_source_is_usage_error(tmp_path: Path, text: str, reason: str) -> None:
    code, err = run_shovel(args_for(text, tmp_path / "out"), tmp_path / "log")
    assert code == 2
    assert "ERROR shovel: --source 'nats://" in err
    assert reason in err
    assert not (tmp_path / "out").exists()


def test_unreadable_credentials_file_is_usage_error(tmp_path: Path) -> None:
    source = f"{nowhere()}&creds={tmp_path / 'missing.creds'}"
    code, err = run_shovel(args_for(source, tmp_path / "out"), tmp_path / "log")
    assert code == 2
    assert "cannot read the NATS credentials file" in err


def args_for(source: str, out: Path, metrics_port: int = 0) -> list[str]:
    """Arguments that run `source` into `out` (metrics on `metrics_port`, 0: none)."""
    return ["--source", source, "--output-dir", str(out), "--metrics-port", str(metrics_port)]


def nowhere() -> str:
    """A NATS source on a port where no server listens."""
    return f"nats://127.0.0.1:{free_port()}/S?consumer=c"


# --- against a real server ----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    """One JetStream server with stream S (subjects S.>)."""
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        yield cluster


def all_acknowledged(cluster: Cluster, consumer: str, count: int) -> bool:
    return ack_floor(cluster, "S", consumer) == count


def shovel_args(
    cluster: Cluster, out: Path, consumer: str, options: str = "", metrics_port: int = 0
) -> list[str]:
    source = cluster.source("S", consumer, options)
    return [*args_for(source, out, metrics_port), "--shutdown-timeout-s", "5"]


def test_stores_every_message_once_and_stops_cleanly(server: Cluster, tmp_path: Path) -> None:
    count = 3000
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    port = free_port()
    s = Shovel(shovel_args(server, out, "c", "&batch=100", port), tmp_path / "log")
    wait_until(lambda: all_acknowledged(server, "c", count), what="every message acknowledged")
    _, text = http_get(port, "/metrics")
    assert metric(text, "shovel_nats_messages_fetched_total") == count
    assert metric(text, "shovel_nats_messages_acked_total") == count
    assert metric(text, "shovel_nats_ack_latency_seconds_count") == count
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert_clean_stderr(s.stderr)
    assert_exactly(out, count)
    cp = read_checkpoint(out)
    assert cp is not None
    assert cp.committed_offset == count
    origin = decode(cp.source)
    assert isinstance(origin, NatsOrigin)
    assert (origin.stream, origin.consumer) == ("S", "c")


def test_acknowledges_only_what_is_durable(server: Cluster, tmp_path: Path) -> None:
    """fsync stalls 5 s the first time: messages are fetched and written while nothing is
    durable. At every look, from the first delivery to the last acknowledgement, the server
    holds no more messages acknowledged than the checkpoint on disk holds records, and its
    acknowledgement floor does not pass the committed offset (the consumer is asked before the
    checkpoint is read, and the checkpoint only grows). The stall is seen at least once:
    messages delivered, none durable."""
    count = 500
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    s = FaultyShovel(shovel_args(server, out, "c"), tmp_path / "log", "before-fsync=delay:5000*1")
    stall_seen = False

    def acknowledged_within_checkpoint() -> bool:
        nonlocal stall_seen
        info = consumer_info(server, "S", "c")
        cp = read_checkpoint(out)
        if info is None:
            return False
        durable, offset = (cp.records, cp.committed_offset) if cp is not None else (0, 0)
        delivered = count - (info.num_pending or 0)
        acknowledged = delivered - (info.num_ack_pending or 0)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        assert acknowledged <= durable
        assert floor <= offset
        stall_seen = stall_seen or (delivered > 0 and durable == 0)
        return floor == count

    wait_until(acknowledged_within_checkpoint, what="every message acknowledged")
    assert stall_seen, "never saw messages delivered while none was durable"
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert_exactly(out, count)


def test_crash_between_checkpoint_and_ack_does_not_store_twice(
    server: Cluster, tmp_path: Path
) -> None:
    """The process dies right after a checkpoint, before its messages are acknowledged: they
    are redelivered (ack_wait 2 s), and the restart acknowledges them without storing them
    again."""
    count = 2000
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    args = shovel_args(server, out, "c", "&batch=100&ack_wait_s=2")
    crashed = FaultyShovel(args, tmp_path / "log1", "after-checkpoint=abort@2")
    assert crashed.wait() == -signal.SIGABRT
    cp = read_checkpoint(out)
    assert cp is not None
    origin = decode(cp.source)
    assert isinstance(origin, NatsOrigin)
    listed = decode_ranges(origin.stored)
    assert listed, "the checkpoint lists the messages stored and not yet acknowledged"
    assert max(listed) <= cp.committed_offset

    port = free_port()
    s = Shovel(shovel_args(server, out, "c", "&batch=100&ack_wait_s=2", port), tmp_path / "log2")
    wait_until(lambda: all_acknowledged(server, "c", count), what="every message acknowledged")
    _, text = http_get(port, "/metrics")
    assert metric(text, "shovel_nats_messages_skipped_total") > 0
    assert metric(text, "shovel_nats_messages_redelivered_total") > 0
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert_clean_stderr(s.stderr)
    assert_exactly(out, count)


def store_ten_and_stop(server: Cluster, out: Path, log: Path) -> None:
    """Publishes messages 0-9; a run stores them, is stopped, exits 0."""
    asyncio.run(publish(server, "S", 0, 10))
    s = Shovel(shovel_args(server, out, "c"), log)
    wait_until(lambda: all_acknowledged(server, "c", 10), what="every message acknowledged")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0


def test_stream_made_again_is_refused(server: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    store_ten_and_stop(server, out, tmp_path / "log1")

    on_servers(server, lambda js: js.delete_stream("S"))
    asyncio.run(create_stream(server, "S", replicas=1))
    code, err = run_shovel(shovel_args(server, out, "c"), tmp_path / "log2")
    assert code == 1
    assert "was deleted and made again" in err
    assert_exactly(out, 10)


def test_subject_filter_outside_the_stream_is_usage_error(server: Cluster, tmp_path: Path) -> None:
    args = args_for(server.source("S", "c", "&subject=OTHER.x"), tmp_path / "out")
    code, err = run_shovel(args, tmp_path / "log")
    assert code == 2
    assert "subject filter OTHER.x matches none of stream S's subjects (S.>)" in err


def test_missing_stream_is_usage_error(server: Cluster, tmp_path: Path) -> None:
    code, err = run_shovel(args_for(server.source("NOPE", "c"), tmp_path / "out"), tmp_path / "log")
    assert code == 2
    assert "stream NOPE does not exist" in err


def test_other_source_in_output_dir_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _ = run_shovel(args_for("generate:10", out), tmp_path / "l1")
    assert code == 0
    # Refused from the checkpoint alone, before any server is asked.
    code, err = run_shovel(args_for(nowhere(), out), tmp_path / "l2")
    assert code == 1
    assert "holds records from the generator" in err


def test_sigterm_while_waiting_for_a_server(tmp_path: Path) -> None:
    s = Shovel(args_for(nowhere(), tmp_path / "out"), tmp_path / "log")
    s.wait_for_log("NATS: cannot connect to")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "received while connecting: nothing was read" in s.stderr
    assert_clean_stderr(s.stderr)


def test_no_server_within_the_connect_timeout_is_exit_1(tmp_path: Path) -> None:
    """--nats-connect-timeout-s bounds the start: no server, exit 1 (not a usage error), and
    the report says why."""
    out = tmp_path / "out"
    code, err = run_shovel(
        [*args_for(nowhere(), out), "--nats-connect-timeout-s", "1.5"], tmp_path / "log"
    )
    assert code == 1, err
    assert "NATS: cannot connect to 127.0.0.1:" in err
    assert "no NATS server accepted the connection within 1.5s: " in err
    assert_clean_stderr(err)
    report = read_report(out)
    assert report is not None
    assert report.exit_code == 1
    assert "no NATS server accepted the connection within 1.5s" in (report.detail or "")


def _stored_all(out: Path, count: int) -> bool:
    """The checkpoint of `out` covers `count` records."""
    cp = read_checkpoint(out)
    return cp is not None and cp.records == count


def test_credentials_file(tmp_path: Path) -> None:
    """A server that requires JWT authentication: shovel connects with creds=PATH (the
    server's challenge signed with the file's seed); without it, it is refused and waits."""
    with running_cluster(tmp_path, 1, secured=True) as cluster:
        assert cluster.creds is not None
        asyncio.run(create_stream(cluster, "S", replicas=1))
        asyncio.run(publish(cluster, "S", 0, 100))
        out = tmp_path / "out"
        refused = Shovel(shovel_args(cluster, out, "c"), tmp_path / "log0")
        refused.wait_for_log("Authorization Violation")
        refused.signal(signal.SIGTERM)
        assert refused.wait() == 0
        cp = read_checkpoint(out)
        assert cp is None or cp.records == 0

        s = Shovel(shovel_args(cluster, out, "c", f"&creds={cluster.creds}"), tmp_path / "log1")
        s.wait_for_log("shovel started")
        wait_until(lambda: _stored_all(out, 100), what="the 100 messages stored")
        s.signal(signal.SIGTERM)
        assert s.wait() == 0
        assert_clean_stderr(s.stderr)
        assert_exactly(out, 100)


def test_consumer_gone_or_made_again_is_refused(server: Cluster, tmp_path: Path) -> None:
    """A consumer made again delivers the stream from its first message: the output directory
    that stored them through the old one refuses it, and refuses to make one itself."""
    out = tmp_path / "out"
    store_ten_and_stop(server, out, tmp_path / "log1")
    on_servers(server, lambda js: js.delete_consumer("S", "c"))
    code, err = run_shovel(shovel_args(server, out, "c"), tmp_path / "log2")
    assert code == 1
    assert "consumer c no longer exists on stream S" in err
    assert consumer_info(server, "S", "c") is None, "shovel made the consumer again"
    config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT)
    on_servers(server, lambda js: js.add_consumer("S", config))
    code, err = run_shovel(shovel_args(server, out, "c"), tmp_path / "log3")
    assert code == 1
    assert "it was deleted and made again" in err
    assert_exactly(out, 10)


def test_consumer_deleted_while_running_stops_the_run(server: Cluster, tmp_path: Path) -> None:
    asyncio.run(publish(server, "S", 0, 10))
    out = tmp_path / "out"
    s = Shovel(shovel_args(server, out, "c"), tmp_path / "log")
    wait_until(lambda: all_acknowledged(server, "c", 10), what="every message acknowledged")
    on_servers(server, lambda js: js.delete_consumer("S", "c"))
    assert s.wait() == 1
    assert "consumer c was deleted on the server" in s.stderr
    assert_exactly(out, 10)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"max_deliver": 5}, "has max_deliver 5"),
        ({"inactive_threshold": 3600.0}, "has inactive_threshold 3600s"),
    ],
)
def test_consumer_that_could_drop_messages_is_usage_error(
    server: Cluster, tmp_path: Path, setting: dict[str, float], reason: str
) -> None:
    """A message given back at each stop would not be delivered again after max_deliver
    deliveries; a consumer with an inactive_threshold is deleted when idle."""
    config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, **setting)  # type: ignore[arg-type]
    on_servers(server, lambda js: js.add_consumer("S", config))
    code, err = run_shovel(shovel_args(server, tmp_path / "out", "c"), tmp_path / "log")
    assert code == 2
    assert reason in err


def test_sigterm_with_the_server_gone(server: Cluster, tmp_path: Path) -> None:
    """The only server dies; while the client tries to reconnect, SIGTERM: everything read is
    durable, so exit 0 with the summary and the report, though nothing can be sent."""
    asyncio.run(publish(server, "S", 0, 200))
    out = tmp_path / "out"
    s = Shovel(shovel_args(server, out, "c"), tmp_path / "log")
    wait_until(lambda: all_acknowledged(server, "c", 200), what="every message acknowledged")
    server.servers[0].kill()
    # Reconnection attempts are 1 s apart: a few of them, with pull requests due meanwhile.
    wait_until(lambda: s.stderr.count("NATS: cannot connect to") >= 3, what="reconnection attempts")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert_clean_stderr(s.stderr)
    assert "no server connected at the stop" in s.stderr
    assert summary(s.stderr).undelivered == 0
    report = read_report(out)
    assert report is not None
    assert report.exit_code == 0
    assert_exactly(out, 200)


def test_sigterm_with_the_server_silent_keeps_the_deadline(server: Cluster, tmp_path: Path) -> None:
    """The server is frozen (connected, never answering): the stop still ends within the
    shutdown timeout (the client's own drain and flush wait 10 s each whatever the caller's
    timeout), and exits 0: everything read is durable."""
    asyncio.run(publish(server, "S", 0, 200))
    out = tmp_path / "out"
    args = [*shovel_args(server, out, "c")[:-2], "--shutdown-timeout-s", "3"]
    s = Shovel(args, tmp_path / "log")
    wait_until(lambda: all_acknowledged(server, "c", 200), what="every message acknowledged")
    proc = server.servers[0].proc
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        s.signal(signal.SIGTERM)
        # 3 s of deadline, and room for a loaded machine; the client's own waits took 10 s more.
        assert s.wait(timeout_s=9) == 0
    finally:
        proc.send_signal(signal.SIGCONT)
    assert_clean_stderr(s.stderr)
    assert summary(s.stderr).took_s < 4.0
    assert_exactly(out, 200)


def test_deadline_gives_back_what_is_not_durable(server: Cluster, tmp_path: Path) -> None:
    """fsync hangs past the deadline: exit 3 with the undelivered count; what was fetched is
    given back to the server (negative acknowledgement) rather than left to ack_wait, and the
    next run stores every message exactly once."""
    count = 300
    asyncio.run(publish(server, "S", 0, count))
    out = tmp_path / "out"
    args = [*shovel_args(server, out, "c")[:-2], "--shutdown-timeout-s", "2"]
    # The stall must outlast fetching all of them, the SIGTERM and the 2 s deadline, also on a
    # loaded machine; the run does not wait for it (it exits at the deadline).
    s = FaultyShovel(args, tmp_path / "log1", "before-fsync=delay:10000*1")

    def all_fetched() -> bool:
        info = consumer_info(server, "S", "c")
        return info is not None and info.num_pending == 0 and info.num_ack_pending == count

    wait_until(all_fetched, what="every message fetched and none acknowledged")
    s.signal(signal.SIGTERM)
    assert s.wait() == 3
    assert_clean_stderr(s.stderr)
    assert summary(s.stderr).undelivered == count
    assert f"{count} given back for redelivery" in s.stderr
    report = read_report(out)
    assert report is not None
    assert (report.exit_code, report.undelivered) == (3, count)

    again = Shovel(shovel_args(server, out, "c"), tmp_path / "log2")
    # Given back, they come at once; left to ack_wait (30 s), they would not come for 30 s.
    wait_until(
        lambda: all_acknowledged(server, "c", count),
        timeout_s=20,
        what="every message delivered again and acknowledged before ack_wait",
    )
    again.signal(signal.SIGTERM)
    assert again.wait() == 0
    assert_exactly(out, count)


def imported(importtime_log: str) -> set[str]:
    """The modules a `-X importtime` log (PYTHONPROFILEIMPORTTIME) says were imported."""
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in importtime_log.splitlines()
        if line.startswith("import time:") and not line.endswith("imported package")
    }


def test_a_nats_run_never_imports_nats_py(server: Cluster, tmp_path: Path) -> None:
    """The native client does the work: a whole run (start, messages stored and
    acknowledged, /metrics scraped, a stop) imports no module of the nats-py package (`nats`):
    it can leave shovel's runtime dependencies. Every import is logged, those made late too
    (the interpreter's importtime log, on stderr)."""
    asyncio.run(publish(server, "S", 0, 10))
    out = tmp_path / "out"
    port = free_port()
    profiled = ["env", "PYTHONPROFILEIMPORTTIME=1"]
    with Shovel(shovel_args(server, out, "c", "", port), tmp_path / "log", launcher=profiled) as s:
        wait_until(lambda: all_acknowledged(server, "c", 10), what="every message acknowledged")
        code, text = http_get(port, "/metrics")
        assert (code, metric(text, "shovel_nats_messages_acked_total")) == (200, 10)
        s.signal(signal.SIGTERM)
        assert s.wait() == 0, s.stderr
    modules = imported(s.stderr)
    # The log is complete: the NATS source and the native module are in it.
    assert {"shovel.sources.nats.source", "shovel._native"} <= modules
    assert not [m for m in modules if m == "nats" or m.startswith("nats.")]
    assert_exactly(out, 10)
