//! The yardsticks of shovel's NATS source and sink (`bench/nats_bench.py`,
//! `bench/sink_bench.py`): the least a consumer or a publisher must do to give shovel's
//! guarantee, with nothing around it, and the server's own ingest.
//!
//! ```text
//! nats-baseline publish --server HOST:PORT[,...] --subject SUBJECT --count N --payload-bytes B [--window W]
//!               [--offset-header] [--msg-id]
//! nats-baseline drain --server HOST:PORT[,...] --stream STREAM --consumer NAME --count N --batch B
//!               --output PATH [--no-storage]
//! nats-baseline sink --server HOST:PORT[,...] --subject SUBJECT --count N --payload-bytes B [--batch B]
//!               [--expected-last SEQ] [--offset-header] [--msg-id]
//! nats-baseline ingest --server HOST:PORT[,...] --stream STREAM --subject SUBJECT --count N
//!               --payload-bytes B [--offset-header] [--msg-id]
//! nats-baseline probe --server HOST:PORT[,...] --subject-prefix PREFIX
//! ```
//!
//! `drain` creates a durable pull consumer with explicit acknowledgements and repeats, until it
//! has stored and acknowledged `count` messages:
//!
//! 1. fetch up to `batch` messages (one pull request that does not wait for more);
//! 2. write one JSON line per message, `{"seq":N,"subject":"S","data":"BASE64"}`, into one
//!    buffer, append it to the output file and `fdatasync` it (once per batch);
//! 3. acknowledge every message of the batch, each `+ACK` with a reply subject on an inbox of
//!    its own (`<inbox>.<seq>`), all sent at once, and wait until the server has confirmed
//!    every one before the next fetch.
//!
//! With `--no-storage`, step 2 is left out: what the server and the client cost alone.
//! Several processes may share one consumer (each runs until it has done `count` messages
//! or is killed: the benchmark watches the consumer's acknowledgement floor).
//!
//! `publish` sends `count` messages with JetStream publishes, `window` of them in flight, and
//! waits for every acknowledgement: pipelined publishing, with no guarantee against gaps (a
//! publish that fails leaves a hole behind the ones after it that succeeded).
//!
//! `sink` gives the JetStream sink's guarantee (issue 18): `count` messages in atomic batches
//! of up to `batch` (at most 1,000, the server's limit), one batch in flight:
//!
//! 1. every message of a batch carries `Nats-Batch-Id` (one per batch) and
//!    `Nats-Batch-Sequence` (1-based); the first also `Nats-Expected-Last-Subject-Sequence`,
//!    the stream sequence of the last message on the subject (`--expected-last`, 0 for an
//!    empty subject, then the sequence of the previous commit's PubAck): a second writer on
//!    the subject, or a batch lost before it, makes the server refuse the batch;
//! 2. every message but the last is a plain publish (no reply subject: the server answers
//!    only the commit);
//! 3. the last carries `Nats-Batch-Commit: 1` and is a request, whose answer is the PubAck
//!    (`{"stream":..,"seq":<last seq of the batch>,"batch":..,"count":..}`), checked before
//!    the next batch is sent.
//!
//! `ingest` sends `count` core publishes (fire and forget: no reply subject, nothing awaited)
//! onto the stream's subject, then polls the stream's state until it holds them (or stops
//! growing): the server's own ingest rate.
//!
//! `--offset-header` and `--msg-id` add the headers the sink puts on every message: a
//! `Shovel-Offset` (the source offset after the record, as if each payload were a line of a
//! file) and a `Nats-Msg-Id` (`<16 hex>:<offset>`), so that the yardsticks send what shovel
//! sends.
//!
//! `probe` asks the server two questions the sink builds on, on subjects under `PREFIX.`
//! (a stream with `allow_atomic` must hold them): is `Nats-Expected-Last-Subject-Sequence: 0`
//! honoured (a batch with it accepted on an empty subject, refused on one that holds a
//! message), and is a `Nats-Msg-Id` accepted inside an atomic batch (and what becomes of a
//! batch sent again with the same ids: as it was, and with the expected sequence brought up
//! to date).
//!
//! Each prints one JSON object on stdout (what was done and how long it took) and exits 0, or
//! prints the error on stderr and exits 1. No reconnect handling, no stop protocol, no metrics:
//! that is the point.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::{HeaderMap, Subject};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

/// Any error, said once on stderr.
type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the confirmations of one batch's acknowledgements may take before the run fails.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// The pause after a fetch that found nothing.
const EMPTY_PAUSE: Duration = Duration::from_millis(5);
/// How long the PubAck of a batch's commit may take before the run fails.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// The server's limit on the messages of one atomic batch.
const MAX_BATCH: usize = 1000;
/// How often `ingest` asks for the stream's state.
const INGEST_POLL: Duration = Duration::from_millis(5);
/// How long `ingest` waits for the stream to grow before it reports what it holds.
const INGEST_STALL: Duration = Duration::from_secs(1);
/// The source id of the `Nats-Msg-Id`s: 16 hex digits, as the sink's.
const SOURCE_ID: &str = "0000000000000b1e";

/// The command line as `--name value` pairs (and bare `--flag`s, with an empty value).
struct Args(HashMap<String, String>);

impl Args {
    /// Reads `--name value` pairs; a name followed by another name, or last, is a flag.
    fn parse(words: &[String]) -> Result<Args, Error> {
        let mut found = HashMap::new();
        let mut i = 0;
        while i < words.len() {
            let name = words[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --NAME, got {:?}", words[i]))?;
            let value = words.get(i + 1).filter(|v| !v.starts_with("--"));
            found.insert(name.to_owned(), value.cloned().unwrap_or_default());
            i += if value.is_some() { 2 } else { 1 };
        }
        Ok(Args(found))
    }

    /// A value that must be given.
    fn text(&self, name: &str) -> Result<&str, Error> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required").into())
    }

    /// A whole number that must be given.
    fn number(&self, name: &str) -> Result<usize, Error> {
        let text = self.text(name)?;
        text.parse()
            .map_err(|_| format!("--{name}: not a whole number: {text:?}").into())
    }

    /// A whole number, or `default`.
    fn number_or(&self, name: &str, default: usize) -> Result<usize, Error> {
        if self.0.contains_key(name) {
            self.number(name)
        } else {
            Ok(default)
        }
    }

    /// Whether a flag is given.
    fn flag(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Connects to the servers of `--server` (`HOST:PORT[,HOST:PORT...]`).
async fn connect(args: &Args) -> Result<async_nats::Client, Error> {
    let servers: Vec<&str> = args.text("server")?.split(',').collect();
    Ok(async_nats::connect(servers.as_slice()).await?)
}

/// The per-message headers of `--offset-header` and `--msg-id`, as the sink sends them.
struct RecordHeaders {
    /// `Shovel-Offset` on every message.
    offset: bool,
    /// `Nats-Msg-Id` on every message.
    msg_id: bool,
    /// The bytes of a record in its file (payload and newline): the offsets' step.
    line_bytes: u64,
}

impl RecordHeaders {
    /// Reads the flags.
    fn new(args: &Args, payload_bytes: usize) -> RecordHeaders {
        RecordHeaders {
            offset: args.flag("offset-header"),
            msg_id: args.flag("msg-id"),
            line_bytes: payload_bytes as u64 + 1,
        }
    }

    /// Whether any header is asked for (a message without is published without a header map).
    fn any(&self) -> bool {
        self.offset || self.msg_id
    }

    /// The headers of record `index` (0-based).
    fn of(&self, index: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let offset = (index as u64 + 1) * self.line_bytes;
        if self.offset {
            headers.insert("Shovel-Offset", offset.to_string());
        }
        if self.msg_id {
            headers.insert("Nats-Msg-Id", format!("{SOURCE_ID}:{offset}"));
        }
        headers
    }

    /// Says which headers are sent, for the figures.
    fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.offset {
            names.push("Shovel-Offset");
        }
        if self.msg_id {
            names.push("Nats-Msg-Id");
        }
        names
    }
}

/// The figures every publisher prints.
fn figures(count: usize, elapsed: Duration, more: Value) -> String {
    let elapsed_s = elapsed.as_secs_f64();
    let mut found = json!({
        "messages": count,
        "elapsed_s": elapsed_s,
        "msg_per_s": count as f64 / elapsed_s,
    });
    if let (Some(found), Value::Object(more)) = (found.as_object_mut(), more) {
        found.extend(more);
    }
    found.to_string()
}

/// Publishes the stream's messages, `window` in flight, every PubAck awaited; returns the
/// figures as JSON.
async fn publish(args: &Args) -> Result<String, Error> {
    let count = args.number("count")?;
    let window = args.number_or("window", 256)?.max(1);
    let payload_bytes = args.number("payload-bytes")?;
    let payload = Bytes::from(vec![b'x'; payload_bytes]);
    let headers = RecordHeaders::new(args, payload_bytes);
    let subject = Subject::from(args.text("subject")?);
    let client = connect(args).await?;
    let js = jetstream::new(client.clone());
    let started = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    for index in 0..count {
        if in_flight.len() == window {
            if let Some(ack) = in_flight.pop_front() {
                ack.await?;
            }
        }
        let ack = if headers.any() {
            js.publish_with_headers(subject.clone(), headers.of(index), payload.clone())
                .await?
        } else {
            js.publish(subject.clone(), payload.clone()).await?
        };
        in_flight.push_back(ack);
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await?;
    }
    let elapsed = started.elapsed();
    client.flush().await?;
    Ok(figures(
        count,
        elapsed,
        json!({"window": window, "headers": headers.names()}),
    ))
}

/// Sends one atomic batch of `messages` (at least one) to `subject` with id `id`, the first
/// expecting `expected_last` as the subject's last stream sequence: every message but the
/// last a plain publish, the last the commit, a request. Returns the server's answer to the
/// commit, parsed (a PubAck, or `{"error":..}`).
async fn send_batch(
    client: &async_nats::Client,
    subject: &Subject,
    id: &str,
    expected_last: u64,
    messages: impl ExactSizeIterator<Item = (HeaderMap, Bytes)>,
) -> Result<Value, Error> {
    let last = messages.len();
    for (number, (mut headers, payload)) in (1..).zip(messages) {
        headers.insert("Nats-Batch-Id", id);
        headers.insert("Nats-Batch-Sequence", number.to_string());
        if number == 1 {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected_last.to_string(),
            );
        }
        if number < last {
            client
                .publish_with_headers(subject.clone(), headers, payload)
                .await?;
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(payload)
                .timeout(Some(COMMIT_WAIT));
            let answer = client.send_request(subject.clone(), request).await?;
            return Ok(serde_json::from_slice(&answer.payload)?);
        }
    }
    Err("an empty batch".into())
}

/// Checks a commit's answer: the PubAck of batch `id` with `count` messages stored after
/// `after`. Returns the stream sequence of the batch's last message.
fn check_batch_ack(answer: &Value, id: &str, count: usize, after: u64) -> Result<u64, Error> {
    if let Some(error) = answer.get("error") {
        return Err(format!("batch {id} refused: {error}").into());
    }
    let seq = answer.get("seq").and_then(Value::as_u64);
    let stored = answer.get("count").and_then(Value::as_u64);
    let batch = answer.get("batch").and_then(Value::as_str);
    let stream = answer.get("stream").and_then(Value::as_str).unwrap_or("");
    match seq {
        Some(seq)
            if batch == Some(id)
                && stored == Some(count as u64)
                && !stream.is_empty()
                && seq >= after + count as u64 =>
        {
            Ok(seq)
        }
        _ => Err(format!("batch {id} of {count}: not its PubAck: {answer}").into()),
    }
}

/// A prefix of batch ids unique to this run (the server keys batches by id).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Publishes the messages in atomic batches, one in flight, each commit's PubAck checked
/// before the next batch; returns the figures as JSON.
async fn sink(args: &Args) -> Result<String, Error> {
    let count = args.number("count")?;
    let batch = args.number_or("batch", MAX_BATCH)?.clamp(1, MAX_BATCH);
    let payload_bytes = args.number("payload-bytes")?;
    let payload = Bytes::from(vec![b'x'; payload_bytes]);
    let headers = RecordHeaders::new(args, payload_bytes);
    let subject = Subject::from(args.text("subject")?);
    let mut last_seq = args.number_or("expected-last", 0)? as u64;
    let client = connect(args).await?;
    let run = run_id();
    let started = Instant::now();
    let mut sent = 0;
    let mut batches = 0;
    let mut slowest_ack = Duration::ZERO;
    while sent < count {
        let size = batch.min(count - sent);
        let id = format!("{run}-{batches}");
        let messages = (sent..sent + size).map(|index| (headers.of(index), payload.clone()));
        let sent_at = Instant::now();
        let answer = send_batch(&client, &subject, &id, last_seq, messages).await?;
        slowest_ack = slowest_ack.max(sent_at.elapsed());
        last_seq = check_batch_ack(&answer, &id, size, last_seq)?;
        sent += size;
        batches += 1;
    }
    let elapsed = started.elapsed();
    Ok(figures(
        count,
        elapsed,
        json!({
            "batch": batch,
            "batches": batches,
            "last_seq": last_seq,
            "slowest_batch_s": slowest_ack.as_secs_f64(),
            "headers": headers.names(),
        }),
    ))
}

/// Sends core publishes onto the stream's subject, then waits until the stream holds them;
/// returns the figures as JSON (`stored` below `messages` if the server dropped some).
async fn ingest(args: &Args) -> Result<String, Error> {
    let count = args.number("count")?;
    let payload_bytes = args.number("payload-bytes")?;
    let payload = Bytes::from(vec![b'x'; payload_bytes]);
    let headers = RecordHeaders::new(args, payload_bytes);
    let subject = Subject::from(args.text("subject")?);
    let client = connect(args).await?;
    let stream = jetstream::new(client.clone())
        .get_stream(args.text("stream")?)
        .await?;
    let before = stream.get_info().await?.state.messages;
    let started = Instant::now();
    for index in 0..count {
        if headers.any() {
            client
                .publish_with_headers(subject.clone(), headers.of(index), payload.clone())
                .await?;
        } else {
            client.publish(subject.clone(), payload.clone()).await?;
        }
    }
    client.flush().await?;
    let published = started.elapsed();
    // The server stores what it was sent after it has read it: the time to count is until
    // the stream holds it all, or has stopped growing (what it dropped is reported).
    let mut stored = 0;
    let mut grew = (Instant::now(), started.elapsed());
    loop {
        let held = stream
            .get_info()
            .await?
            .state
            .messages
            .saturating_sub(before);
        if held > stored {
            stored = held;
            grew = (Instant::now(), started.elapsed());
        }
        if stored >= count as u64 || grew.0.elapsed() > INGEST_STALL {
            break;
        }
        tokio::time::sleep(INGEST_POLL).await;
    }
    Ok(figures(
        count,
        grew.1,
        json!({
            "stored": stored,
            "published_s": published.as_secs_f64(),
            "headers": headers.names(),
        }),
    ))
}

/// Asks the server whether it honours an expected last subject sequence of 0 and accepts
/// `Nats-Msg-Id` inside an atomic batch; returns the answers as JSON.
async fn probe(args: &Args) -> Result<String, Error> {
    let prefix = args.text("subject-prefix")?;
    let client = connect(args).await?;
    let run = run_id();
    let payload = Bytes::from_static(b"probe");
    let two = || (0..2).map(|_| (HeaderMap::new(), payload.clone()));
    // Expected 0: on an empty subject it must be accepted, on one that holds a message refused.
    let zero = Subject::from(format!("{prefix}.zero"));
    let on_empty = send_batch(&client, &zero, &format!("{run}-z1"), 0, two()).await?;
    let on_nonempty = send_batch(&client, &zero, &format!("{run}-z2"), 0, two()).await?;
    let honoured = on_empty.get("error").is_none() && on_nonempty.get("error").is_some();
    // Msg-Id inside a batch: accepted at all? And a batch sent again with the same ids (a
    // retry after a lost PubAck): refused, stored again, or answered as a duplicate?
    let ids = Subject::from(format!("{prefix}.msgid"));
    let with_ids = || {
        (1..3).map(|n: u32| {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{SOURCE_ID}:{n}"));
            (headers, payload.clone())
        })
    };
    let first = send_batch(&client, &ids, &format!("{run}-m1"), 0, with_ids()).await?;
    // A retry after a lost PubAck sends the batch again as it was (a new batch id, the same
    // expected sequence); with the expected sequence brought up to date, only the ids say
    // that the messages are stored already.
    let retry = send_batch(&client, &ids, &format!("{run}-m2"), 0, with_ids()).await?;
    let after = first.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let again = send_batch(&client, &ids, &format!("{run}-m3"), after, with_ids()).await?;
    Ok(json!({
        "expected_zero": {
            "honoured": honoured,
            "on_empty_subject": on_empty,
            "on_subject_with_messages": on_nonempty,
        },
        "msg_id_in_batch": {
            "accepted": first.get("error").is_none(),
            "answer": first,
            "retried_as_sent": retry,
            "same_ids_again": again,
        },
    })
    .to_string())
}

/// Appends `message`'s stored line to `out`.
fn push_line(out: &mut Vec<u8>, seq: u64, message: &async_nats::Message) -> Result<(), Error> {
    write!(out, r#"{{"seq":{seq},"subject":"#)?;
    serde_json::to_writer(&mut *out, message.subject.as_str())?;
    out.extend_from_slice(br#","data":""#);
    let start = out.len();
    let len = base64::encoded_len(message.payload.len(), true).ok_or("a payload too large")?;
    out.resize(start + len, 0);
    base64::engine::general_purpose::STANDARD.encode_slice(&message.payload, &mut out[start..])?;
    out.extend_from_slice(b"\"}\n");
    Ok(())
}

/// Drains the stream through a new durable consumer; returns the figures as JSON.
async fn drain(args: &Args) -> Result<String, Error> {
    let count = args.number("count")?;
    let batch = args.number("batch")?.max(1);
    let storing = !args.flag("no-storage");
    let client = connect(args).await?;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(args.text("stream")?).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(args.text("consumer")?.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let inbox = client.new_inbox();
    let mut confirmations = client.subscribe(format!("{inbox}.*")).await?;
    let mut file: Option<File> = if storing {
        let path = args.text("output")?;
        Some(OpenOptions::new().create(true).append(true).open(path)?)
    } else {
        None
    };
    let started = Instant::now();
    let mut done = 0;
    let mut fetches = 0;
    let mut lines = Vec::new();
    let mut delivered = Vec::with_capacity(batch);
    while done < count {
        // 1. Fetch.
        delivered.clear();
        let mut fetched = consumer.fetch().max_messages(batch).messages().await?;
        fetches += 1;
        while let Some(message) = fetched.next().await {
            let message = message?;
            let seq = message.info()?.stream_sequence;
            delivered.push((seq, message));
        }
        if delivered.is_empty() {
            // Nothing to fetch now (other processes on the consumer hold the rest): ask again
            // a little later rather than at once, so as not to load the server with requests.
            tokio::time::sleep(EMPTY_PAUSE).await;
            continue;
        }
        // 2. Store: one line each, appended, one fdatasync.
        if let Some(file) = file.as_mut() {
            lines.clear();
            for (seq, message) in &delivered {
                push_line(&mut lines, *seq, message)?;
            }
            file.write_all(&lines)?;
            file.sync_data()?;
        }
        // 3. Acknowledge them all at once, then wait for every confirmation.
        for (seq, message) in &delivered {
            let reply = message
                .reply
                .clone()
                .ok_or("a delivery without a reply subject")?;
            client
                .publish_with_reply(reply, format!("{inbox}.{seq}"), Bytes::from_static(b"+ACK"))
                .await?;
        }
        let confirm = async {
            for _ in 0..delivered.len() {
                match confirmations.next().await {
                    Some(answer) if answer.status.is_none() => {}
                    Some(answer) => {
                        return Err(format!("an acknowledgement not applied: {answer:?}"))
                    }
                    None => return Err("the confirmations' subscription ended".to_owned()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(CONFIRM_WAIT, confirm)
            .await
            .map_err(|_| "acknowledgements not confirmed in time")??;
        done += delivered.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(format!(
        r#"{{"messages":{done},"fetches":{fetches},"elapsed_s":{elapsed}}}"#
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let result = match Args::parse(words.get(1..).unwrap_or_default()) {
        Err(e) => Err(e),
        Ok(args) => match words.first().map(String::as_str) {
            Some("publish") => publish(&args).await,
            Some("drain") => drain(&args).await,
            Some("sink") => sink(&args).await,
            Some("ingest") => ingest(&args).await,
            Some("probe") => probe(&args).await,
            _ => Err(
                "usage: nats-baseline publish|drain|sink|ingest|probe --NAME VALUE ... (see the source)"
                    .into(),
            ),
        },
    };
    match result {
        Ok(figures) => {
            println!("{figures}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nats-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
