"""The NATS JetStream source in-process, with no server: the nats:// syntax, the stored record,
the ledger, and the source's own steps (batches the checkpoint can list, a consumer whose
creation is refused or must be tried again, the acknowledging task's end)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, ConsumerInfo

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


# --- the source's own steps -------------------------------------------------------------------


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
