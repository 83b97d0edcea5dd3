//! The NATS source end to end against a real server: messages published, consumed into
//! record batches, made durable, acknowledged, and the stop (see support/mod.rs: skipped
//! without NATS_SERVER).
// Helpers here are test code too: a failed setup should panic loudly.
#![allow(clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use shovel_native::nats::connect::NatsConfig;
use shovel_native::nats::consumer::ConsumerSpec;
use shovel_native::nats::core::Batch;
use shovel_native::nats::events::Level;
use shovel_native::nats::source::{Source, SourceSettings, CLOSE_WAIT};
use shovel_native::nats::stoprecord;
use support::{api, runtime, wait_until, NatsServer};

/// How long any one wait here may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

fn settings(server: &NatsServer, batch: usize, max_unacked: usize, out: &Path) -> SourceSettings {
    SourceSettings {
        config: NatsConfig {
            servers: vec![server.url()],
            connect_timeout: Some(Duration::from_secs(15)),
            ..NatsConfig::default()
        },
        spec: ConsumerSpec {
            stream: "S".into(),
            consumer: "c".into(),
            subject: None,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 100_000,
            shutdown_timeout: Duration::from_secs(10),
            server: server.url(),
            batch,
        },
        batch,
        max_unacked,
        output_dir: Some(out.to_path_buf()),
    }
}

/// Stream S with `count` messages on S.a: payload `m<i>`, every tenth with a Nats-Msg-Id.
fn publish(server: &NatsServer, count: usize) {
    let made = api(
        server,
        "STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["S.>"]}),
    );
    assert!(made.get("error").is_none(), "{made}");
    let url = server.url();
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.expect("client");
        for i in 0..count {
            let payload = format!("m{i}").into_bytes().into();
            if i % 10 == 0 {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("id-{i}").as_str());
                client
                    .publish_with_headers("S.a", headers, payload)
                    .await
                    .expect("publish");
            } else {
                client.publish("S.a", payload).await.expect("publish");
            }
        }
        client.flush().await.expect("flush");
    });
    wait_until(WAIT, "every message in the stream", || {
        api(server, "STREAM.INFO.S", json!({}))["state"]["messages"] == count
    });
}

/// Opens `source` and starts reading; fails on a refusal.
fn open(source: &Source) -> String {
    source.restore(0, None).expect("restore");
    source.start_open().expect("start");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(outcome) = source.open_result() {
            let phrase = outcome.expect("opened");
            source.start_reading(0).expect("reading");
            return phrase;
        }
        assert!(
            Instant::now() < deadline,
            "not open: {:?}",
            source.take_events()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Takes batches until `done` (given the records read) says so; returns them. With
/// `durable`, the count of records made durable before these: each is made durable as read.
fn read(
    source: &Source,
    mut done: impl FnMut(usize) -> bool,
    durable: Option<usize>,
) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    let mut records = 0;
    let deadline = Instant::now() + WAIT;
    while !done(records) {
        assert!(Instant::now() < deadline, "{records} records read");
        match source.take_batch().expect("reading") {
            Some(batch) => {
                records += batch.records;
                batches.push(batch);
                if let Some(before) = durable {
                    source.made_durable((before + records) as u64);
                }
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    batches
}

/// The stored lines by sequence: (subject, id, payload).
fn stored(batches: &[Batch]) -> BTreeMap<u64, (String, Option<String>, Vec<u8>)> {
    let mut by_seq = BTreeMap::new();
    for batch in batches {
        let text = std::str::from_utf8(&batch.data).expect("ASCII");
        assert_eq!(text.lines().count(), batch.records);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            let seq = v["seq"].as_u64().expect("seq");
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().expect("data"))
                .expect("base64");
            let record = (
                v["subject"].as_str().expect("subject").to_string(),
                v["id"].as_str().map(str::to_string),
                data,
            );
            assert!(by_seq.insert(seq, record).is_none(), "{seq} stored twice");
        }
    }
    by_seq
}

fn consumer(server: &NatsServer) -> Value {
    api(server, "CONSUMER.INFO.S.c", json!({}))
}

/// A server whose stream S holds `count` messages, and a source on it (batch, max_unacked)
/// opened and reading; `None` without a server binary.
fn reading(
    count: usize,
    batch: usize,
    max_unacked: usize,
) -> Option<(NatsServer, tempfile::TempDir, Source, String)> {
    let server = NatsServer::start("")?;
    publish(&server, count);
    let out = tempfile::tempdir().expect("tempdir");
    let source = Source::new(settings(&server, batch, max_unacked, out.path())).expect("source");
    let phrase = open(&source);
    Some((server, out, source, phrase))
}

#[test]
fn ten_thousand_messages_stored_once_acknowledged_after_durability() {
    let Some((server, out, source, phrase)) = reading(10_000, 256, 256 * 12) else {
        return;
    };
    assert_eq!(
        phrase,
        "consumer c: ack_wait 60s, max_ack_pending 100000, 10000 messages pending"
    );
    let batches = read(&source, |n| n >= 10_000, Some(0));
    let by_seq = stored(&batches);
    assert_eq!(by_seq.len(), 10_000);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=10_000).collect::<Vec<_>>()
    );
    for (&seq, (subject, id, data)) in &by_seq {
        let i = seq - 1;
        assert_eq!(subject, "S.a");
        assert_eq!(data, format!("m{i}").as_bytes());
        let expected = (i % 10 == 0).then(|| format!("id-{i}"));
        assert_eq!(*id, expected, "{seq}");
    }
    let last = batches.last().expect("batches");
    assert_eq!(last.end_offset, 10_000);
    assert!(last
        .descriptor
        .starts_with(r#"{"v":1,"kind":"nats","stream":"S","consumer":"c","created":""#));
    // Every acknowledgement confirmed: the floor at the end, nothing pending.
    wait_until(WAIT, "every acknowledgement confirmed", || {
        source.stats().acked.load(Ordering::Relaxed) == 10_000
    });
    wait_until(WAIT, "the consumer's floor at the last message", || {
        let info = consumer(&server);
        info["ack_floor"]["stream_seq"] == 10_000 && info["num_ack_pending"] == 0
    });
    assert!(source.take_batch().expect("reading").is_none());
    let report = source
        .finish(10_000, Duration::from_secs(10))
        .expect("report");
    assert!(report.connected);
    assert_eq!(
        (
            report.acked,
            report.not_confirmed,
            report.given_back,
            report.due_back
        ),
        (10_000, 0, 0, 0)
    );
    assert_eq!(report.stop_record_error, None);
    // Nothing waited for the deadline (10 s): the last pull request's expiry (2 s) and the
    // closing round trip.
    assert!(report.took < Duration::from_secs(5), "{:?}", report.took);
    let record = stoprecord::read(out.path())
        .expect("stop record")
        .expect("written");
    assert_eq!(record.not_confirmed, "");
    let bad: Vec<_> = source
        .take_events()
        .into_iter()
        .filter(|(level, _)| *level >= Level::Warning)
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    // Finished: a second stop does nothing.
    assert!(source.finish(10_000, Duration::from_secs(1)).is_none());
}

#[test]
fn a_stop_gives_back_what_is_not_durable_to_another_replica_at_once() {
    let Some((server, _out, first, _)) = reading(1000, 100, 500) else {
        return;
    };
    // Three batches read; only the first made durable.
    let mut batches = read(&first, |n| n >= 300, None);
    // The tail (what arrived and was not cut yet) is stored too, but not made durable.
    batches.extend(first.take_tail());
    let durable = batches[0].records;
    first.made_durable(durable as u64);
    let taken: usize = batches.iter().map(|b| b.records).sum();
    let report = first
        .finish(durable as u64, Duration::from_secs(10))
        .expect("report");
    assert!(report.connected);
    assert!(report.due_back >= taken - durable, "{report:?}");
    assert_eq!(report.given_back as usize, report.due_back);
    assert_eq!(report.not_confirmed, 0, "{report:?}");
    assert_eq!(report.acked as usize, durable);

    // Another replica gets what was given back now, long before ack_wait (60 s).
    let started = Instant::now();
    let other_out = tempfile::tempdir().expect("tempdir");
    let second = Source::new(settings(&server, 100, 2000, other_out.path())).expect("source");
    open(&second);
    let rest = read(&second, |n| n >= 1000 - durable, Some(0));
    assert!(started.elapsed() < Duration::from_secs(30));
    let mut all = stored(&batches[..1]);
    for (seq, record) in stored(&rest) {
        assert!(all.insert(seq, record).is_none(), "{seq} stored by both");
    }
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    let report = second
        .finish(1000 - durable as u64, Duration::from_secs(10))
        .expect("report");
    assert_eq!(report.not_confirmed, 0, "{report:?}");
    wait_until(WAIT, "the consumer's floor at the last message", || {
        consumer(&server)["ack_floor"]["stream_seq"] == 1000
    });
}

#[test]
fn the_consumer_deleted_while_reading_ends_reading() {
    let Some((server, _out, source, _)) = reading(10, 100, 500) else {
        return;
    };
    let batches = read(&source, |n| n >= 10, Some(0));
    assert_eq!(stored(&batches).len(), 10);
    let deleted = api(&server, "CONSUMER.DELETE.S.c", json!({}));
    assert_eq!(deleted["success"], true, "{deleted}");
    let deadline = Instant::now() + WAIT;
    let why = loop {
        match source.take_batch() {
            Err(why) => break why,
            Ok(batch) => assert!(batch.is_none(), "nothing more to read"),
        }
        assert!(Instant::now() < deadline, "reading went on");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        why,
        "consumer c was deleted on the server: nothing more can be read through it, and one \
         made again would deliver every message again"
    );
    let report = source.finish(10, Duration::from_secs(5)).expect("report");
    assert_eq!(report.due_back, 0, "{report:?}");
}

#[test]
fn a_wait_for_room_is_said_with_its_cause_and_its_end() {
    let Some((_server, _out, source, _)) = reading(100, 20, 50) else {
        return;
    };
    // 50 read, none made durable: the reader may hold no more.
    let batches = read(&source, |n| n >= 50, None);
    let warning = "NATS: reading has waited 5s for room: this replica holds the most messages \
                   it may (50) fetched and not confirmed acknowledged: 50 fetched and not yet \
                   made durable by storage";
    let mut lines = Vec::new();
    wait_until(WAIT, "the stall said", || {
        lines.extend(source.take_events());
        lines.iter().any(|(_, text)| text == warning)
    });
    assert_eq!(source.stats().stalls.load(Ordering::Relaxed), 1);
    assert!(source.stalled() >= Duration::from_secs(5));
    assert!(source.take_batch().expect("reading").is_none());
    // Made durable: acknowledged, confirmed, room again, and the end said.
    source.made_durable(50);
    let _rest = read(&source, |n| n >= 50, Some(50));
    wait_until(WAIT, "the end of the stall said", || {
        lines.extend(source.take_events());
        lines.iter().any(|(level, text)| {
            *level == Level::Info && text.starts_with("NATS: reading again after waiting 5.")
        })
    });
    // Everything confirmed: no wait for room any more.
    wait_until(WAIT, "no wait for room", || {
        source.stalled() == Duration::ZERO
    });
    assert_eq!(stored(&batches).len(), 50);
    let buckets = source.stats().ack_latency_buckets();
    assert_eq!(
        buckets[buckets.len() - 1],
        source.stats().acked.load(Ordering::Relaxed)
    );
    source.close(CLOSE_WAIT);
}

#[test]
fn a_server_killed_and_restarted_mid_read_loses_nothing_and_stores_nothing_twice() {
    let Some(mut server) = NatsServer::start("") else {
        return;
    };
    publish(&server, 5000);
    let out = tempfile::tempdir().expect("tempdir");
    // A single server killed outright may come back without its consumer's state (seen
    // here: the ack floor back at 0), and then delivers every message again. What guards an
    // output directory against storing one twice is the ledger's window of confirmed
    // entries (max_unacked of them): here it covers every message.
    let mut settings = settings(&server, 100, 5000, out.path());
    // Whatever was delivered and not acknowledged when the server died comes again soon.
    settings.spec.ack_wait = Duration::from_secs(3);
    let source = Source::new(settings).expect("source");
    open(&source);
    let mut batches = read(&source, |n| n >= 1000, Some(0));
    server.kill_and_restart();
    let before: usize = batches.iter().map(|b| b.records).sum();
    batches.extend(read(&source, |n| before + n >= 5000, Some(before)));
    let lines = source.take_events();
    assert!(
        lines
            .iter()
            .any(|(level, text)| *level == Level::Warning
                && text == "NATS: disconnected; reconnecting"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|(level, text)| *level == Level::Info
            && *text == format!("NATS: reconnected to {}", server.host_port())),
        "{lines:?}"
    );
    // Until the floor is at the last message, whatever comes is read and made durable too
    // (a delivery again of a message whose acknowledgement the restarted server lost).
    let mut records: usize = batches.iter().map(|b| b.records).sum();
    wait_until(WAIT, "the consumer's floor at the last message", || {
        while let Some(batch) = source.take_batch().expect("reading") {
            records += batch.records;
            batches.push(batch);
        }
        source.made_durable(records as u64);
        consumer(&server)["ack_floor"]["stream_seq"] == 5000
    });
    let by_seq = stored(&batches);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=5000).collect::<Vec<_>>()
    );
    let report = source
        .finish(records as u64, Duration::from_secs(10))
        .expect("report");
    assert_eq!(report.not_confirmed, 0, "{report:?}");
}
