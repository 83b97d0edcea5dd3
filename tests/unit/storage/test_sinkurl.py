"""`--sink nats://...`: what parses, and the reason given for what does not."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shovel.redact import redact
from shovel.storage.sinkurl import SinkSpec, parse_sink


def test_servers_stream_subject_and_defaults() -> None:
    spec = parse_sink("nats://a:4223,b/RECORDS?subject=records.app")
    assert spec == SinkSpec(
        servers=("nats://a:4223", "nats://b:4222"), stream="RECORDS", subject="records.app"
    )
    assert spec.batch == 1000
    assert spec.describe() == (
        "NATS JetStream nats://a:4223,nats://b:4222 stream RECORDS subject records.app"
    )


def test_options_and_tls(tmp_path: Path) -> None:
    spec = parse_sink(f"tls://h/S?subject=x&batch=10&tls_ca={tmp_path}/ca.pem")
    assert spec.servers == ("tls://h:4222",)
    assert spec.batch == 10
    assert spec.tls_ca == tmp_path / "ca.pem"


def test_a_password_is_masked_from_then_on() -> None:
    spec = parse_sink("nats://user:s3cr3t-sink@h/S?subject=x")
    assert spec.servers == ("nats://user:s3cr3t-sink@h:4222",)
    assert "s3cr3t-sink" not in spec.describe()
    assert "s3cr3t-sink" not in redact("url nats://user:s3cr3t-sink@h")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("file:/x", "a sink is a NATS JetStream stream"),
        ("nats://h/S", "needs ?subject=SUBJECT"),
        ("nats://h?subject=x", "needs the stream name"),
        ("nats://h/S.T?subject=x", "bad stream name"),
        ("nats://h/S?subject=a.*", "no wildcards"),
        ("nats://h/S?subject=a.>", "no wildcards"),
        ("nats://h/S?subject=a..b", "bad sink subject"),
        ("nats://h/S?subject=x&batch=0", "1-1000"),
        ("nats://h/S?subject=x&batch=1001", "1-1000"),
        ("nats://h/S?subject=x&consumer=c", "unknown nats:// option 'consumer'"),
        ("nats://h/S?subject=x&subject=y", "given twice"),
        ("nats://h/S?subject=x&tls_cert=/c", "go together"),
        ("nats://h:0/S?subject=x", "bad NATS server port"),
    ],
)
def test_refusals_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_sink(text)


def test_files_that_cannot_be_read_are_named(tmp_path: Path) -> None:
    spec = parse_sink(f"nats://h/S?subject=x&creds={tmp_path}/missing.creds")
    with pytest.raises(ValueError, match="cannot read the NATS credentials file"):
        spec.check_files()
