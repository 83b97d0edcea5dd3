"""The NATS source's acknowledgement confirmations: a status the server sends in their place (a
503, no responders, while the consumer has no leader) confirms nothing. Taken as a
confirmation, it let a stop record the message as confirmed; the consumer's next leader
delivered it again once the ledger had let it go, and it was stored twice in one output
directory (seen in test_nats_cluster with a NATS server killed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.msg import Msg

from shovel.sources.nats.ledger import read_stop_record
from shovel.sources.nats.source import NatsSource
from shovel.sources.nats.url import parse_nats

ACK_INBOX = "_INBOX.ackbox"


def _delivery(seq: int, delivered: int = 1) -> Msg:
    reply = f"$JS.ACK.ORDERS.shovel.{delivered}.{seq}.{seq}.1700000000000000000.0"
    return Msg(None, subject="ORDERS.orders", reply=reply, data=b"x", headers=None)  # type: ignore[arg-type]


def _answer(seq: int, headers: dict[str, str] | None) -> Msg:
    """What comes back on the acknowledgement inbox for `seq`: a confirmation (no headers),
    or the status a server sends when nothing subscribes to the acknowledgement subject."""
    return Msg(None, subject=f"{ACK_INBOX}.{seq}", reply="", data=b"", headers=headers)  # type: ignore[arg-type]


# What nats-py hands a subscription callback for "NATS/1.0 503" (as seen on a three-server
# cluster whose consumer leader's server was killed).
NO_RESPONDERS = {"Status": "503", "Nats-Subject": "$JS.ACK.ORDERS.shovel.1.4586.4586.1.0"}


def _source(out: Path) -> NatsSource:
    # batch 50, queue 8: max_unacked (and kept_max) 600, as in the test's replicas.
    source = NatsSource(parse_nats("nats://h/ORDERS?consumer=shovel&batch=50"), 8, 3.0, out)
    source._ack_inbox = ACK_INBOX
    return source


def _store(source: NatsSource, seqs: list[int], stored: int) -> tuple[int, str]:
    """The reader hands `seqs` over and storage makes them durable; returns (records stored in
    this run, the checkpoint's descriptor)."""
    for seq in seqs:
        source._arrived.append((_delivery(seq), 0.0))
    source._take_arrived()
    batch = source._batch()
    assert batch is not None
    assert batch.records == len(seqs)
    stored += batch.records
    source._ledger.made_durable(stored)
    assert batch.source is not None
    return stored, batch.source


def test_no_responders_is_not_a_confirmation(tmp_path: Path) -> None:
    # 4583, 4586, 4589 stored; 4583 and 4589 confirmed; 4586's acknowledgement is answered 503
    # (the consumer leader's server has just died).
    first = _source(tmp_path)
    first.resume(3998, "")
    _store(first, [4583, 4586, 4589], 0)
    for seq in (4583, 4589):
        asyncio.run(first._on_ack_confirmed(_answer(seq, None)))
    asyncio.run(first._on_ack_confirmed(_answer(4586, NO_RESPONDERS)))
    assert first._ledger.not_confirmed() == [4586], "a 503 was taken as a confirmation"


def test_message_redelivered_after_failover_is_not_stored_twice(tmp_path: Path) -> None:
    # As above; then the stop record that finish() writes.
    first = _source(tmp_path)
    first.resume(3998, "")
    stored, descriptor = _store(first, [4583, 4586, 4589], 0)
    for seq in (4583, 4589):
        asyncio.run(first._on_ack_confirmed(_answer(seq, None)))
    asyncio.run(first._on_ack_confirmed(_answer(4586, NO_RESPONDERS)))

    async def stop() -> None:
        await first._record_stop(
            first._ledger.not_confirmed(), asyncio.get_running_loop().time() + 5
        )

    asyncio.run(stop())
    record = read_stop_record(tmp_path)
    assert record is not None
    assert record.not_confirmed == "4586"
    # The next run resumes from the checkpoint and the stop record; the new consumer leader's
    # floor is below the stored messages.
    later = _source(tmp_path)
    later.resume(4589, descriptor)
    assert later._ledger.below_floor(4583)[0] <= 1
    # 1410 new messages stored and confirmed: more than the ledger keeps of confirmed ones.
    stored = 0
    for start in range(4591, 6001, 50):
        seqs = list(range(start, min(start + 50, 6001)))
        stored, _ = _store(later, seqs, stored)
        for seq in seqs:
            asyncio.run(later._on_ack_confirmed(_answer(seq, None)))
    # ack_wait after its first delivery, the new consumer leader delivers 4586 again.
    later._arrived.append((_delivery(4586, delivered=2), 0.0))
    later._take_arrived()
    assert [seq for seq, _, _ in later._held] == [], "4586 would be stored a second time"
    assert later.progress.skipped == 1
