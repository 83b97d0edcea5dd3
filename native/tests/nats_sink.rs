//! The JetStream sink against a real server: records stored byte for byte with their headers,
//! the resume point read back, batches of one without `allow_atomic`, another writer refused,
//! the refusals at open, and a close that cannot finish (see support/mod.rs: skipped without
//! NATS_SERVER).
// Helpers here are test code too: a failed setup should panic loudly.
#![allow(clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use shovel_native::nats::connect::{NatsConfig, OpenError};
use shovel_native::sink::open::Opened;
use shovel_native::sink::records::OffsetUnit;
use shovel_native::sink::{Closed, Sink, SinkSettings};
use support::{api, runtime, NatsServer};

/// How long any one wait here may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// Stream S on `S.>`.
fn stream(server: &NatsServer, atomic: bool) {
    let made = api(
        server,
        "STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["S.>"], "allow_atomic": atomic}),
    );
    assert!(made.get("error").is_none(), "{made}");
}

fn settings(server: &NatsServer, subject: &str, batch: usize) -> SinkSettings {
    SinkSettings {
        config: NatsConfig {
            servers: vec![server.url()],
            connect_timeout: Some(Duration::from_secs(15)),
            ..NatsConfig::default()
        },
        stream: "S".into(),
        subject: subject.into(),
        batch,
        max_inflight_bytes: 1 << 20,
        unit: OffsetUnit::Bytes,
    }
}

/// Starts a sink and waits for its open's outcome.
fn open(settings: SinkSettings, writer: &str) -> (Sink, Result<Opened, OpenError>) {
    let sink = Sink::start(settings, writer.into()).expect("start");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(outcome) = sink.opened() {
            return (sink, outcome);
        }
        assert!(Instant::now() < deadline, "the open did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Hands `lines` over as one batch ending at `end`.
fn submit(sink: &Sink, lines: &[String], end: u64, source: Option<&str>) {
    let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
    sink.submit(
        vec![Bytes::from(data)],
        lines.len() as u64,
        end,
        source,
        OffsetUnit::Bytes,
    )
    .expect("accepted");
}

/// Message `seq` of S: its payload and headers.
fn message(server: &NatsServer, seq: u64) -> (Vec<u8>, String) {
    let got = api(server, "STREAM.MSG.GET.S", json!({ "seq": seq }));
    let m = &got["message"];
    let b64 = base64::engine::general_purpose::STANDARD;
    let data = b64.decode(m["data"].as_str().unwrap_or("")).expect("data");
    let hdrs = b64
        .decode(m["hdrs"].as_str().unwrap_or(""))
        .expect("headers");
    (data, String::from_utf8_lossy(&hdrs).into_owned())
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("record {i}")).collect()
}

fn stored_len(lines: &[String]) -> u64 {
    lines.iter().map(|l| l.len() as u64 + 1).sum()
}

#[test]
fn records_are_stored_byte_for_byte_and_the_stream_is_the_checkpoint() {
    let Some(server) = NatsServer::start("") else {
        return;
    };
    stream(&server, true);
    let (sink, opened) = open(settings(&server, "S.out", 1000), "w1");
    let opened = opened.expect("opened");
    assert_eq!(
        (opened.offset, opened.sequence, opened.atomic),
        (0, 0, true)
    );
    let (a, b) = (lines(0..1500), lines(1500..2500));
    let end_a = stored_len(&a);
    let end_b = end_a + stored_len(&b);
    submit(&sink, &a, end_a, Some("{\"d\":1}"));
    submit(&sink, &b, end_b, None);
    assert_eq!(sink.close(WAIT), Closed::Done(end_b));
    assert_eq!(sink.stats().records_durable, 2500);
    for (i, line) in a.iter().chain(&b).enumerate() {
        let (data, _) = message(&server, i as u64 + 1);
        assert_eq!(data, line.as_bytes(), "message {}", i + 1);
    }
    // The 1,000th record ends a batch: it carries the descriptor and the writer.
    let (_, headers) = message(&server, 1000);
    let offset = stored_len(&lines(0..1000));
    assert!(
        headers.contains(&format!("Shovel-Offset: {offset}\r\n")),
        "{headers}"
    );
    assert!(headers.contains("Shovel-Source: {\"d\":1}"), "{headers}");
    assert!(headers.contains("Shovel-Writer: w1"), "{headers}");
    let (_, inner) = message(&server, 999);
    assert!(!inner.contains("Shovel-Source"), "{inner}");
    // A restart reads the resume point back.
    let (again, opened) = open(settings(&server, "S.out", 1000), "w2");
    let opened = opened.expect("reopened");
    assert_eq!(
        (
            opened.offset,
            opened.sequence,
            opened.messages,
            opened.source.as_str()
        ),
        (end_b, 2500, 2500, "{\"d\":1}")
    );
    assert_eq!(again.close(WAIT), Closed::Done(end_b));
}

#[test]
fn a_stream_without_atomic_batches_takes_one_record_at_a_time() {
    let Some(server) = NatsServer::start("") else {
        return;
    };
    stream(&server, false);
    let (sink, opened) = open(settings(&server, "S.one", 1000), "w1");
    assert!(!opened.expect("opened").atomic);
    let recs = lines(0..50);
    submit(&sink, &recs, stored_len(&recs), Some("{}"));
    assert_eq!(sink.close(WAIT), Closed::Done(stored_len(&recs)));
    for (i, line) in recs.iter().enumerate() {
        let (data, headers) = message(&server, i as u64 + 1);
        assert_eq!(data, line.as_bytes());
        assert!(headers.contains("Shovel-Writer: w1"), "{headers}");
    }
}

#[test]
fn another_writer_on_the_subject_stops_the_sink() {
    let Some(server) = NatsServer::start("") else {
        return;
    };
    stream(&server, true);
    let (sink, opened) = open(settings(&server, "S.shared", 100), "mine");
    opened.expect("opened");
    let first = lines(0..10);
    submit(&sink, &first, stored_len(&first), Some("{}"));
    let deadline = Instant::now() + WAIT;
    while sink.stats().records_durable < 10 {
        assert!(Instant::now() < deadline, "the first batch was not stored");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Someone else writes on the subject.
    let (other, opened) = open(settings(&server, "S.shared", 100), "theirs");
    opened.expect("opened");
    let theirs = lines(100..105);
    submit(&other, &theirs, 5000, Some("{}"));
    assert_eq!(other.close(WAIT), Closed::Done(5000));
    let more = lines(10..20);
    submit(&sink, &more, stored_len(&first) + stored_len(&more), None);
    match sink.close(WAIT) {
        Closed::Failed(why) => assert!(why.contains("another writer"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let info = api(&server, "STREAM.INFO.S", json!({}));
    assert_eq!(
        info["state"]["messages"], 15,
        "nothing after the other writer's"
    );
}

#[test]
fn refusals_at_open_say_why() {
    let Some(server) = NatsServer::start("") else {
        return;
    };
    let (_, missing) = open(settings(&server, "S.x", 10), "w");
    let missing = missing.expect_err("no stream");
    assert!(missing.message().contains("does not exist"), "{missing:?}");
    stream(&server, true);
    let (_, outside) = open(settings(&server, "T.x", 10), "w");
    let outside = outside.expect_err("subject");
    assert!(
        outside.message().contains("is not in stream S"),
        "{outside:?}"
    );
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.expect("client");
        client
            .request("S.foreign", "not shovel's".into())
            .await
            .expect("stored");
    });
    let (_, foreign) = open(settings(&server, "S.foreign", 10), "w");
    match foreign.expect_err("foreign") {
        OpenError::Mismatch(why) => assert!(why.contains("not written by shovel"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_close_past_its_deadline_says_what_was_not_acknowledged() {
    let Some(mut server) = NatsServer::start("") else {
        return;
    };
    stream(&server, true);
    let (sink, opened) = open(settings(&server, "S.slow", 100), "w");
    opened.expect("opened");
    server.stop();
    let recs = lines(0..30);
    submit(&sink, &recs, stored_len(&recs), Some("{}"));
    assert_eq!(sink.close(Duration::from_millis(500)), Closed::TimedOut(30));
    assert_eq!(sink.stats().records_durable, 0);
}
