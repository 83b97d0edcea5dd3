"""The NATS JetStream source: the nats:// syntax, the stored record, the ledger, and against a
real server: every message stored once and acknowledged only once durable, a crash between
the checkpoint and the acknowledgement, a stream or a consumer that was made again, consumers
shovel cannot use, and stops with the server gone, silent, or past the deadline."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from shovel.service.laststop import read_report
from shovel.sources.api import SourceError
from shovel.sources.identity import DescriptorError, NatsOrigin, decode, encode
from shovel.sources.nats.ledger import (
    STOP_RECORD_FILE,
    Counts,
    Ledger,
    Listing,
    StopRecord,
    decode_ranges,
    encode_ranges,
    read_stop_record,
    write_stop_record,
)
from shovel.sources.nats.source import (
    LISTING_MAX_CHARS,
    NatsSource,
    _NotNow,
    record_of,
    subjects_overlap,
)
from shovel.sources.nats.url import NatsSpec, parse_nats
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
    consumer_info,
    create_stream,
    msg_id,
    on_servers,
    payload,
    publish,
    running_cluster,
    stored_messages,
)

# --- the syntax -------------------------------------------------------------------------------


def test_parse_full() -> None:
    spec = parse_nats(
        "nats://u:p%40ss@a.example:4223,b.example,[::1]:4000/ORDERS?consumer=shovel"
        "&subject=ORDERS.eu.>&batch=50&creds=/etc/nats/user.creds&ack_wait_s=45"
        "&max_ack_pending=9000"
    )
    assert spec == NatsSpec(
        servers=(
            "nats://u:p%40ss@a.example:4223",
            "nats://u:p%40ss@b.example:4222",
            "nats://u:p%40ss@[::1]:4000",
        ),
        stream="ORDERS",
        consumer="shovel",
        subject="ORDERS.eu.>",
        batch=50,
        creds=Path("/etc/nats/user.creds"),
        ack_wait_s=45.0,
        max_ack_pending=9000,
    )
    # The password never reaches a log line.
    assert "p%40ss" not in spec.describe()
    assert spec.describe().startswith("NATS JetStream nats://a.example:4223,")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nats:///S?consumer=c", "at least one HOST"),
        ("nats://h", "needs the stream name"),
        ("nats://h/", "needs the stream name"),
        ("nats://h/S", "needs ?consumer=NAME"),
        ("nats://h/S.x?consumer=c", "bad stream name"),
        ("nats://h/S?consumer=a.b", "bad consumer name"),
        ("nats://h/S?consumer=c*", "bad consumer name"),
        ("nats://h:0/S?consumer=c", "bad NATS server port"),
        ("nats://h:99999/S?consumer=c", "bad NATS server port"),
        ("nats://h:x/S?consumer=c", "bad NATS server port"),
        ("nats://h,,g/S?consumer=c", "bad NATS server host"),
        ("nats://h/S?consumer=c&batch=0", "batch must be a whole number 1-10000"),
        ("nats://h/S?consumer=c&batch=lots", "batch must be a whole number"),
        ("nats://h/S?consumer=c&ack_wait_s=0.5", "ack_wait_s must be seconds"),
        ("nats://h/S?consumer=c&colour=red", "unknown nats:// option 'colour'"),
        ("nats://h/S?consumer=c&consumer=d", "given twice"),
        ("nats://h/S?consumer=", "needs a value"),
        ("nats://h/S?consumer=c&subject=a..b", "bad subject filter"),
    ],
)
def test_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("?", r"\?").replace("*", r"\*")):
        parse_nats(text)


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
    assert "error: --source:" in err
    assert reason in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("S.orders", "S.>", True),
        ("S.>", "S.orders.eu", True),
        ("S.*", "S.orders", True),
        ("S.*.eu", "S.orders.*", True),
        ("S.orders", "S.orders", True),
        ("S", "S.>", False),
        ("OTHER.x", "S.>", False),
        ("S.orders", "S.orders.eu", False),
        ("S.*", "S.a.b", False),
    ],
)
def test_subjects_overlap(a: str, b: str, overlap: bool) -> None:
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap


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


# --- the stored record and the ledger ---------------------------------------------------------


def _msg(data: bytes, headers: dict[str, str] | None) -> Msg:
    return Msg(None, subject="ORDERS.eu", reply="", data=data, headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"", b"plain", b"two\nlines\r\n", bytes(range(256))])
def test_record_is_one_ascii_line_that_gives_back_the_payload(data: bytes) -> None:
    line = record_of(42, _msg(data, {"Nats-Msg-Id": "id-\u00e9"}))
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line.isascii()
    body = json.loads(line)
    assert body == {
        "seq": 42,
        "subject": "ORDERS.eu",
        "id": "id-\u00e9",
        "data": base64.b64encode(data).decode(),
    }
    assert base64.b64decode(body["data"]) == data


def test_record_without_msg_id_has_no_id() -> None:
    assert "id" not in json.loads(record_of(7, _msg(b"x", None)))


def test_ranges_round_trip() -> None:
    seqs = [1, 2, 3, 7, 9, 10, 100]
    assert encode_ranges(seqs) == "1-3,7,9-10,100"
    assert encode_ranges([3, 1, 2]) == "1-3"
    assert encode_ranges([]) == ""
    assert decode_ranges("1-3,7,9-10,100") == seqs
    assert decode_ranges("") == []


@pytest.mark.parametrize("text", ["x", "3-1", "1-", "-1", "1,,2", "1-99999999999"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(DescriptorError):
        decode_ranges(text)


def test_nats_origin_round_trip() -> None:
    origin = NatsOrigin("ORDERS", "shovel", "2026-01-01T00:00:00.000001Z", "1-5,9")
    assert decode(encode(origin)) == origin


def test_ledger_acknowledges_batches_in_order_once_durable() -> None:
    ledger = Ledger([5], kept_max=10)
    ledger.hand_over([(10, "r10", 1.0), (11, "r11", 1.0)], LISTING_MAX_CHARS)
    assert ledger.hand_over([(12, "r12", 2.0)], LISTING_MAX_CHARS) == Listing("5,10-12", "")
    assert ledger.in_flight() == 3
    assert ledger.restored() == 1
    # Nothing is durable: nothing to acknowledge, and a confirmation cannot come early.
    ledger.made_durable(1)
    assert ledger.unconfirmed(sent_before=10.0) == []
    assert ledger.confirmed(10) is None
    # The first batch's two records are durable: its listing is the checkpoint's.
    ledger.made_durable(2)
    assert ledger.durable_listing == Listing("5,10-11", "")
    assert ledger.unconfirmed(sent_before=10.0) == [(10, "r10"), (11, "r11")]
    # (Taken to be given back at a stop, it would leave the ledger.)
    assert [(s, e.reply) for s, e in ledger.entries.items() if not e.durable] == [(12, "r12")]
    # A redelivery of a durable message brings a new subject to acknowledge with.
    entry = ledger.known(11, "r11-again")
    assert entry is not None
    assert entry.durable
    assert ledger.known(99, "r99") is None
    confirmed = ledger.confirmed(10)
    assert confirmed is not None
    assert confirmed.fetched_at == 1.0
    assert ledger.confirmed(10) is None
    assert ledger.unconfirmed(sent_before=10.0) == [(11, "r11-again")]
    assert ledger.in_flight() == 2
    # Confirmed, 10 is listed apart; 5 (restored) and 11 are stored and not confirmed.
    assert ledger.listing(LISTING_MAX_CHARS) == Listing("5,11-12", "10")
    assert ledger.not_confirmed() == [5, 11]
    # The acknowledgement floor passes 5, 10 and 11: they leave; 11's acknowledgement was sent
    # and not confirmed, so the floor is the news that it is acknowledged.
    ledger.entries[11].ack_sent_at = 3.0
    dropped, acknowledged = ledger.below_floor(11)
    assert dropped == 3
    assert [e.reply for e in acknowledged] == ["r11-again"]
    assert ledger.listing(LISTING_MAX_CHARS) == Listing("12", "")
    assert (ledger.in_flight(), ledger.restored()) == (1, 0)
    # A message delivered again after its confirmation is acknowledged again.
    ledger.made_durable(3)
    assert ledger.confirmed(12) is not None
    assert ledger.unconfirmed(sent_before=10.0) == []
    assert ledger.known(12, "r12-again") is not None
    assert ledger.unconfirmed(sent_before=10.0) == [(12, "r12-again")]
    assert ledger.listing(LISTING_MAX_CHARS) == Listing("12", "")


def test_confirmed_entries_make_room_the_longest_confirmed_first() -> None:
    """Confirmed entries are listed only as room allows: however many there are above an
    acknowledgement floor that does not move (scattered, as replicas interleave), they never
    keep a batch out; those confirmed last stay listed, and no more than kept_max of them."""
    ledger = Ledger([], kept_max=1000)
    seqs = range(1000, 2200, 2)
    for i, seq in enumerate(seqs):
        ledger.hand_over([(seq, f"r{seq}", 0.0)], LISTING_MAX_CHARS)
        ledger.made_durable(i + 1)
        assert ledger.confirmed(seq) is not None
    # 600 scattered sequences: 3000 characters to list them all.
    assert ledger.in_flight() == 0
    assert ledger.fits(range(5000, 5100, 2), 300)
    listing = ledger.listing(200)
    assert listing.unconfirmed == ""
    assert 180 < len(listing) <= 200
    kept = decode_ranges(listing.confirmed)
    assert kept == list(seqs)[-len(kept) :]
    assert list(ledger.entries) == kept
    few = Ledger([], kept_max=3)
    for i, seq in enumerate(range(1, 11)):
        few.hand_over([(seq, f"r{seq}", 0.0)], LISTING_MAX_CHARS)
        few.made_durable(i + 1)
        few.confirmed(seq)
    assert few.listing(LISTING_MAX_CHARS) == Listing("", "8-10")


def test_restored_entries_leave_when_delivered_or_dropped() -> None:
    """Entries the checkpoint lists: the unconfirmed ones stay until delivered again (then
    acknowledged like the others) or dropped, the confirmed ones are kept as room allows."""
    ledger = Ledger([1, 2, 3], [7], kept_max=5, on_disk=Listing("1-3", "7"))
    assert ledger.durable_listing == Listing("1-3", "7")
    assert (ledger.restored(), ledger.in_flight()) == (3, 0)
    assert ledger.known(2, "r2") is not None
    assert (ledger.restored(), ledger.in_flight()) == (2, 1)
    assert ledger.unconfirmed(sent_before=10.0) == [(2, "r2")]
    assert ledger.not_confirmed() == [1, 2, 3]
    assert ledger.drop_restored() == 2
    assert ledger.listing(LISTING_MAX_CHARS) == Listing("2", "7")
    assert ledger.counts() == Counts(pending=0, durable=1, restored=0)


def test_stop_record_round_trip(tmp_path: Path) -> None:
    record = StopRecord(Listing("1-3,9", "5-7"), "3,9")
    write_stop_record(tmp_path, record)
    assert read_stop_record(tmp_path) == record
    assert read_stop_record(tmp_path / "nowhere") is None
    for damaged in (
        "{",
        "[]",
        '{"v":2}',
        '{"v":1,"unconfirmed":1}',
        '{"v":1,"unconfirmed":"","confirmed":"","not_confirmed":"x"}',
    ):
        (tmp_path / STOP_RECORD_FILE).write_text(damaged)
        with pytest.raises(DescriptorError):
            read_stop_record(tmp_path)


# --- against a real server ----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Cluster]:
    """One JetStream server with stream S (subjects S.>)."""
    with running_cluster(tmp_path, 1) as cluster:
        asyncio.run(create_stream(cluster, "S", replicas=1))
        yield cluster


def all_acknowledged(cluster: Cluster, consumer: str, count: int) -> bool:
    return ack_floor(cluster, "S", consumer) == count


def assert_exactly(out: Path, count: int) -> None:
    """`out` holds messages 1..count once each, byte-exact, with their ids."""
    stored = stored_messages(out)
    assert [m.seq for m in stored] == list(range(1, count + 1))
    for m in stored:
        i = m.seq - 1
        assert (m.subject, m.msg_id, m.data) == ("S.orders", msg_id(i), payload(i))


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
    s.wait_for_log("Connect call failed")
    s.signal(signal.SIGTERM)
    assert s.wait() == 0
    assert "received while connecting: nothing was read" in s.stderr
    assert_clean_stderr(s.stderr)


def _delivery(seq: int, delivered: int = 1) -> Msg:
    """A message as the consumer delivers it (its reply subject carries the metadata)."""
    reply = f"$JS.ACK.S.c.{delivered}.{seq}.{seq}.1700000000000000000.0"
    return Msg(None, subject="S.orders", reply=reply, data=b"x", headers=None)  # type: ignore[arg-type]


def test_batches_stay_within_what_the_checkpoint_can_list() -> None:
    """Scattered sequences make a long listing: a batch takes only what still fits (the
    checkpoint keeps at most 4096 bytes of source descriptor), and none is made until the
    consumer's acknowledgement floor shortens the listing."""
    source = NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 20.0)
    # 600 sequences stored here and not yet passed by the acknowledgement floor, none adjacent.
    source.resume(
        0,
        encode(NatsOrigin("S", "c", "", ",".join(str(s) for s in range(1_000_000, 1_001_200, 2)))),
    )
    for seq in range(2_000_000, 2_000_400, 2):
        source._arrived.append((_delivery(seq), 0.0))
    source._take_arrived()
    assert source._batch() is None
    # The floor passes half of them: a batch fits, and its descriptor too.
    assert source._ledger.below_floor(1_000_599) == (300, [])
    batch = source._batch()
    assert batch is not None
    assert 0 < batch.records < 200
    assert batch.source is not None
    assert len(batch.source) <= 4096
    assert batch.end_offset == 2_000_000 + 2 * (batch.records - 1)
    # A redelivery of a message being stored is not stored again.
    source._arrived.append((_delivery(2_000_000, delivered=2), 0.0))
    held = len(source._held)
    source._take_arrived()
    assert len(source._held) == held
    assert source.progress.skipped == 1
    assert source.progress.redelivered == 1


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


class _Answers:
    """A JetStream context whose consumer lookups answer as given (cold-start errors)."""

    def __init__(self, info: Exception, add: Exception) -> None:
        self.info, self.add = info, add

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        raise self.info

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo:
        raise self.add


@pytest.mark.parametrize(
    "add_error", [nats.errors.TimeoutError(), nats.js.errors.ServiceUnavailableError()]
)
def test_consumer_creation_that_times_out_is_tried_again(add_error: Exception) -> None:
    """A cluster still electing its leaders answers the creation with a timeout or a 503:
    open() waits and tries again (_NotNow), it does not fail the run."""
    source = NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 20.0)
    source.resume(0, "")
    js = _Answers(nats.js.errors.NotFoundError(), add_error)
    with pytest.raises(_NotNow, match="cannot create consumer c"):
        asyncio.run(source._consumer(js))  # type: ignore[arg-type]


def test_consumer_the_server_refuses_to_create_is_usage_error() -> None:
    """The server refuses the consumer (a 400: here, a max_ack_pending over the server's
    limit) and none exists: that is no race with another replica, nor worth waiting for; the
    run fails with the server's reason."""
    source = NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 20.0)
    source.resume(0, "")
    refused = nats.js.errors.BadRequestError(
        code=400, description="consumer max ack pending exceeds system limit of 1000"
    )
    js = _Answers(nats.js.errors.NotFoundError(), refused)
    with pytest.raises(SourceError) as caught:
        asyncio.run(source._consumer(js))  # type: ignore[arg-type]
    assert not isinstance(caught.value, _NotNow)
    assert str(caught.value) == (
        "cannot create consumer c: consumer max ack pending exceeds system limit of 1000"
    )


def test_sigterm_with_the_server_gone(server: Cluster, tmp_path: Path) -> None:
    """The only server dies; while the client tries to reconnect, SIGTERM: everything read is
    durable, so exit 0 with the summary and the report, though nothing can be sent."""
    asyncio.run(publish(server, "S", 0, 200))
    out = tmp_path / "out"
    s = Shovel(shovel_args(server, out, "c"), tmp_path / "log")
    wait_until(lambda: all_acknowledged(server, "c", 200), what="every message acknowledged")
    server.servers[0].kill()
    # Reconnection attempts are 1 s apart: a few of them, with pull requests due meanwhile.
    wait_until(lambda: s.stderr.count("Connect call failed") >= 3, what="reconnection attempts")
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


def test_acknowledging_task_ends_when_cancelled_as_storage_makes_progress() -> None:
    """Storage reports progress in the same moment the runner cancels the acknowledging task
    (at every stop, it has just drained the queue): the task must end. (asyncio.wait_for of
    Python 3.11 returns the result instead of raising when the inner wait finishes in that
    moment: the task went on, and the run hung at its stop.)"""

    async def cancelled_after(turns: int) -> bool:
        source = NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 20.0)
        acker = asyncio.ensure_future(source.acknowledge(lambda: 0))
        for _ in range(3):
            await asyncio.sleep(0)
        source.durable_progress()
        for _ in range(turns):
            await asyncio.sleep(0)
        acker.cancel()
        await asyncio.wait({acker}, timeout=5)
        return acker.cancelled()

    for turns in range(6):
        assert asyncio.run(cancelled_after(turns)), f"still running (cancelled {turns} turns on)"
