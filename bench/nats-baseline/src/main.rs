//! The yardstick of shovel's NATS source (`bench/nats_bench.py`): the least a consumer must do
//! to give shovel's guarantee, with nothing around it, and a publisher to fill the stream.
//!
//! ```text
//! nats-baseline publish --server HOST:PORT[,...] --subject SUBJECT --count N --payload-bytes B [--window W]
//! nats-baseline drain --server HOST:PORT[,...] --stream STREAM --consumer NAME --count N --batch B
//!               --output PATH [--no-storage]
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
//! waits for every acknowledgement: the server's own ingest rate.
//!
//! Both print one JSON object on stdout (what was done and how long it took) and exit 0, or
//! print the error on stderr and exit 1. No reconnect handling, no stop protocol, no metrics:
//! that is the point.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, context::PublishAckFuture};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;

/// Any error, said once on stderr.
type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the confirmations of one batch's acknowledgements may take before the run fails.
const CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// The pause after a fetch that found nothing.
const EMPTY_PAUSE: Duration = Duration::from_millis(5);

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

/// Publishes the stream's messages; returns the figures as JSON.
async fn publish(args: &Args) -> Result<String, Error> {
    let count = args.number("count")?;
    let window = args.number_or("window", 256)?.max(1);
    let payload = Bytes::from(vec![b'x'; args.number("payload-bytes")?]);
    let subject = args.text("subject")?.to_owned();
    let client = connect(args).await?;
    let js = jetstream::new(client.clone());
    let started = Instant::now();
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    for _ in 0..count {
        if in_flight.len() == window {
            if let Some(ack) = in_flight.pop_front() {
                ack.await?;
            }
        }
        in_flight.push_back(js.publish(subject.clone(), payload.clone()).await?);
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    client.flush().await?;
    Ok(format!(r#"{{"messages":{count},"elapsed_s":{elapsed}}}"#))
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
            _ => Err("usage: nats-baseline publish|drain --NAME VALUE ... (see the source)".into()),
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
