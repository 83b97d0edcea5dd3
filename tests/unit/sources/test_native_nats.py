"""The native NATS source's Python boundary with no server: the constructor (cheap, its
checks), the counters, the steps before an open, an open that finds no server, the stored
record line against the reference `json.dumps`, and the constants Python mirrors."""

from __future__ import annotations

import base64
import gc
import json
import select
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shovel import _native
from shovel.sources.nats.metrics import ack_latency
from shovel.sources.nats.source import STALL_WARN_S
from tests.helpers import free_port


def source(output_dir: Path | None = None, **options: Any) -> _native.NatsSource:
    settings: dict[str, Any] = {
        "servers": ["nats://u:secret@127.0.0.1:4222"],
        "stream": "S",
        "consumer": "c",
        "subject": None,
        "batch": 10,
        "ack_wait_s": 30.0,
        "max_ack_pending": 1600,
        "max_unacked": 100,
        "shutdown_timeout_s": 10.0,
        "output_dir": output_dir,
    }
    settings.update(options)
    return _native.NatsSource(**settings)


def test_a_source_is_made_unconnected_and_counts_nothing() -> None:
    s = source()
    stats = s.stats()
    assert (stats.fetched, stats.acked, stats.nacked, stats.stalls) == (0, 0, 0, 0)
    assert stats.stalled_s == 0.0
    assert stats.ack_latency_buckets == [0] * (len(_native.NATS_ACK_LATENCY_BOUNDS) + 1)
    assert (stats.ack_latency_sum, stats.ack_latency_count) == (0.0, 0)
    assert s.take_events() == []
    assert s.take_batch() is None
    assert s.take_tail() == []
    s.made_durable(5)  # before an open: nothing to acknowledge, no error
    with pytest.raises(RuntimeError, match="not opened"):
        s.start_reading(0)
    assert s.finish(0, 1.0) is None
    s.close(2.0)
    s.close(2.0)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"servers": []}, "no NATS server"),
        ({"servers": ["http://127.0.0.1:4222"]}, "nats:// or tls://"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"max_unacked": 5}, "max_unacked at least batch"),
        ({"ack_wait_s": -1.0}, "ack_wait_s must be"),
        ({"connect_timeout_s": float("nan")}, "connect_timeout_s must be"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
    ],
)
def test_the_constructor_refuses_what_cannot_work(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        source(**options)


def test_restore_reads_the_checkpoint_listing(tmp_path: Path) -> None:
    s = source(tmp_path)
    assert s.restore(0) == (0, False, None)
    s = source(tmp_path)
    # The unconfirmed ones await acknowledgement; the confirmed ones only keep a redelivery
    # from being stored twice.
    assert s.restore(7, stored="3-5,7", acked="1-2", created="2026-01-01T00:00:00.000000Z") == (
        4,
        False,
        None,
    )
    with pytest.raises(_native.NatsMismatch, match="the checkpoint's list of stored messages"):
        source(tmp_path).restore(1, stored="5-3")
    with pytest.raises(ValueError, match="pass its stored too"):
        source(tmp_path).restore(1, acked="1")


def test_a_damaged_stop_record_is_ignored_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "nats-acks.json").write_text("{not json")
    restored, from_stop, warning = source(tmp_path).restore(2, stored="1-2")
    assert (restored, from_stop) == (2, False)
    assert warning is not None
    assert warning.startswith(f"ignoring {tmp_path / 'nats-acks.json'}: ")


def test_an_open_with_no_server_ends_unavailable_within_its_timeout() -> None:
    port = free_port()
    s = source(servers=[f"nats://u:secret@127.0.0.1:{port}"], connect_timeout_s=1.5)
    s.start_open()
    s.start_open()  # once only
    started = time.monotonic()
    lines: list[tuple[int, str]] = []
    while (outcome := _open_outcome(s)) is None:
        assert time.monotonic() - started < 20, lines
        select.select([s.notify_fd()], [], [], 1.0)
        s.drain_notifications()
        lines += s.take_events()
    assert isinstance(outcome, _native.NatsUnavailable)
    assert isinstance(outcome, _native.NatsError)
    assert "within 1.5s" in str(outcome)
    lines += s.take_events()
    assert lines, "no attempt was said"
    assert any(level == 30 and "NATS: cannot connect to" in text for level, text in lines), lines
    assert not any("secret" in text for _, text in lines)
    s.close(2.0)
    s.close(2.0)


def _nats_threads() -> int:
    """This process's threads named shovel-nats (the source's runtime thread)."""
    return sum(
        (task / "comm").read_text().strip() == "shovel-nats"
        for task in Path("/proc/self/task").iterdir()
    )


def test_a_source_dropped_while_opening_lets_its_thread_go() -> None:
    before = _nats_threads()
    s = source(servers=[f"nats://127.0.0.1:{free_port()}"])
    s.start_open()
    assert _nats_threads() == before + 1
    with pytest.raises(ValueError, match="timeout_s must be"):
        s.close(-1.0)
    started = time.monotonic()
    del s
    gc.collect()
    assert time.monotonic() - started < 1.0, "dropping the source blocked"
    deadline = time.monotonic() + 10
    while _nats_threads() > before:
        assert time.monotonic() < deadline, "the runtime thread did not end"
        time.sleep(0.02)


def _open_outcome(s: _native.NatsSource) -> BaseException | None:
    try:
        phrase = s.open_result()
    except _native.NatsError as e:
        return e
    assert phrase is None, phrase
    return None


def test_the_exceptions_say_their_exits() -> None:
    for kind in (
        _native.NatsRefused,
        _native.NatsMismatch,
        _native.NatsUnavailable,
        _native.NatsSourceError,
    ):
        assert issubclass(kind, _native.NatsError)
        assert kind.__module__ == "shovel._native"


def test_the_constants_match_the_python_source() -> None:
    assert _native.NATS_STALL_WARN_S == STALL_WARN_S
    # The buckets shovel_nats_ack_latency_seconds had when it was a Python histogram.
    assert _native.NATS_ACK_LATENCY_BOUNDS == (
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
    )
    family = ack_latency(source().stats())
    labels = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
    assert labels == [
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "30.0",
        "+Inf",
    ]


def reference_line(seq: int, subject: str, msg_id: str | None, data: bytes) -> bytes:
    """The line as the Python source wrote it (`record_of`)."""
    body: dict[str, object] = {"seq": seq, "subject": subject}
    if msg_id:
        body["id"] = msg_id
    body["data"] = base64.b64encode(data).decode("ascii")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


@given(
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    subject=st.text(),
    msg_id=st.none() | st.text(),
    data=st.binary(max_size=300),
)
def test_the_record_line_is_the_python_sources(
    seq: int, subject: str, msg_id: str | None, data: bytes
) -> None:
    assert _native.nats_record_line(seq, subject, msg_id, data) == reference_line(
        seq, subject, msg_id, data
    )
