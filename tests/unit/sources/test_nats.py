"""The NATS JetStream source in-process, with no server: the nats:// and tls:// syntax, and the
Python side of the source (the checkpoint's checks at resume and their errors, the
acknowledging task's end). The stored record, the ranges, the ledger, the stop record, the
batches the checkpoint can list and the consumer's creation moved to Rust with the code that
does them: their tests are cargo's (native/src/nats/{record,ranges,ledger,stoprecord,core,
consumer,text}.rs)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from shovel.sources.api import SourceError, SourceMismatch, SourceOptions
from shovel.sources.identity import NatsOrigin, decode, encode
from shovel.sources.nats.source import NatsSource
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


def test_parse_tls() -> None:
    spec = parse_nats(
        "tls://u:pw@a.example,b.example:4443/S?consumer=c&tls_ca=/etc/ca.pem"
        "&tls_cert=/etc/c.pem&tls_key=/etc/c.key"
    )
    assert spec.servers == ("tls://u:pw@a.example:4222", "tls://u:pw@b.example:4443")
    assert (spec.tls_ca, spec.tls_cert, spec.tls_key) == (
        Path("/etc/ca.pem"),
        Path("/etc/c.pem"),
        Path("/etc/c.key"),
    )
    assert (
        spec.describe()
        == "NATS JetStream tls://a.example:4222,tls://b.example:4443 stream S consumer c"
    )
    assert parse_nats("nats://h/S?consumer=c&tls_ca=/ca.pem").servers == ("nats://h:4222",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nats://h/S?consumer=c&tls_cert=/c.pem", "tls_cert and tls_key go together"),
        ("nats://h/S?consumer=c&tls_key=/c.key", "tls_cert and tls_key go together"),
        ("tls:///S?consumer=c", "at least one HOST"),
        ("nats://h/S?consumer=c&tls_ca=", "needs a value"),
    ],
)
def test_parse_tls_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_nats(text)


@pytest.mark.parametrize("option", ["creds", "tls_ca", "tls_cert", "tls_key"])
def test_a_file_that_cannot_be_read_is_refused_before_any_attempt(
    tmp_path: Path, option: str
) -> None:
    pair = {"tls_cert": "tls_key", "tls_key": "tls_cert"}.get(option)
    readable = tmp_path / "readable"
    readable.write_text("")
    query = f"&{option}={tmp_path / 'missing'}" + (f"&{pair}={readable}" if pair else "")
    spec = parse_nats(f"nats://h/S?consumer=c{query}")
    with pytest.raises(SourceError, match=f"cannot read the NATS .* {tmp_path / 'missing'}$"):
        spec.open(SourceOptions(4096, 1 << 20))


def test_nats_origin_round_trip() -> None:
    origin = NatsOrigin("ORDERS", "shovel", "2026-01-01T00:00:00.000001Z", "1-5,9")
    assert decode(encode(origin)) == origin


# --- the source's own steps -------------------------------------------------------------------


def _source(out: Path | None = None) -> NatsSource:
    return NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 20.0, out)


def test_sizes_are_those_of_the_python_source() -> None:
    source = _source()
    assert source.max_unacked == 256 * 12
    assert source.ack_wait_s == 30.0
    assert source.max_ack_pending == 256 * 12 * 16
    assert NatsSource(parse_nats("nats://h/S?consumer=c"), 8, 45.0).ack_wait_s == 55.0


def test_a_checkpoint_of_another_stream_or_consumer_is_a_mismatch() -> None:
    for stream, consumer in (("T", "c"), ("S", "d")):
        with pytest.raises(SourceMismatch, match="not from stream S consumer c"):
            _source().resume(5, encode(NatsOrigin(stream, consumer, "", "1-5")))


def test_a_listing_that_cannot_be_read_is_a_mismatch() -> None:
    with pytest.raises(SourceMismatch, match="the checkpoint's list of stored messages: "):
        _source().resume(5, encode(NatsOrigin("S", "c", "", "3-1")))


def test_resume_says_where_it_goes_on_and_a_damaged_stop_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _source(tmp_path).resume(0, "") == "consuming after stream sequence 0"
    (tmp_path / "nats-acks.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="shovel.sources.nats.source"):
        phrase = _source(tmp_path).resume(5, encode(NatsOrigin("S", "c", "", "1-5")))
    assert phrase == "consuming after stream sequence 5"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert caplog.records[0].getMessage().startswith(f"ignoring {tmp_path / 'nats-acks.json'}: ")


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
