//! Opening the sink: the connection, the stream checked for what the sink needs, and the
//! resume point read back from the last message on the subject.
//!
//! Every refusal here is permanent (a stream that does not exist, a subject it does not take,
//! a mirror, a sealed stream, a last message that shovel did not write, a denied request): the
//! run ends with exit 1 and the reason. Servers that do not answer yet (no leader, a server
//! going away) are waited for, each wait said, within `--nats-connect-timeout-s` when it is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde::Deserialize;

use super::protocol::{subject_matches, GotMessage, Last};
use super::records::OffsetUnit;
use super::SinkSettings;
use crate::nats::connect::{self, Link, OpenError};
use crate::nats::consumer::{answer, Answer, Api};
use crate::nats::events::Level;
use crate::nats::text::format_g;

/// The wait before asking servers that did not answer again.
const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// Room left in each message for the headers (the descriptor of a file is a few hundred
/// bytes): a record may be at most the stream's largest message less this.
pub const HEADER_ROOM: usize = 4096;

/// What the sink found at open; Python's `SinkOpened`.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(
        name = "SinkOpened",
        frozen,
        get_all,
        skip_from_py_object,
        module = "shovel._native"
    )
)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The source offset the stream holds everything up to (0: nothing).
    pub offset: u64,
    /// The source descriptor stored with it ("" if none).
    pub source: String,
    /// The stream sequence of the last message on the subject (0: none).
    pub sequence: u64,
    /// Messages on the subject.
    pub messages: u64,
    /// Whether the stream takes atomic batches.
    pub atomic: bool,
    /// The largest record the stream takes (its largest message, less room for headers).
    pub record_limit: usize,
}

/// The parts of `STREAM.INFO` the sink reads.
#[derive(Debug, Deserialize)]
struct StreamInfo {
    config: StreamConfig,
    #[serde(default)]
    state: StreamState,
}

#[derive(Debug, Deserialize)]
struct StreamConfig {
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    allow_atomic: bool,
    #[serde(default)]
    max_msg_size: i64,
    #[serde(default)]
    mirror: Option<serde_json::Value>,
    #[serde(default)]
    sealed: bool,
}

#[derive(Debug, Default, Deserialize)]
struct StreamState {
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

/// Why one look ended without an answer.
enum Stop {
    /// For good.
    Open(OpenError),
    /// Not now (the reason).
    NotNow(String),
}

/// Connects and looks the stream up, within the connect timeout when there is one.
pub async fn open(
    settings: &SinkSettings,
    link: &Arc<Link>,
) -> Result<(Client, Opened), OpenError> {
    let client = connect::connect(&settings.config, link).await?;
    let found = look(&client, link, settings);
    let found = match settings.config.connect_timeout {
        None => found.await,
        Some(limit) => match tokio::time::timeout(limit, found).await {
            Ok(found) => found,
            Err(_) => {
                let why = link
                    .last_error()
                    .unwrap_or_else(|| "no attempt finished".into());
                let what = if link.state().connects == 0 {
                    "no NATS server accepted the sink's connection"
                } else {
                    "the NATS servers did not answer the sink"
                };
                Err(OpenError::Unavailable(format!(
                    "{what} within {}s: {why}",
                    format_g(limit.as_secs_f64())
                )))
            }
        },
    };
    found.map(|opened| (client, opened))
}

async fn look(client: &Client, link: &Link, settings: &SinkSettings) -> Result<Opened, OpenError> {
    loop {
        if !link.connected().await {
            return Err(OpenError::Unavailable(
                "the NATS connection is closed".into(),
            ));
        }
        match look_once(client, settings).await {
            Ok(opened) => return Ok(opened),
            Err(Stop::Open(e)) => return Err(e),
            Err(Stop::NotNow(why)) => {
                if let Some(denied) = link.denied() {
                    return Err(OpenError::Refused(format!(
                        "the NATS server denied the sink's request: {denied}"
                    )));
                }
                link.events().say(
                    Level::Warning,
                    format!(
                        "NATS sink: {why}; trying again in {}s",
                        format_g(LOOKUP_RETRY.as_secs_f64())
                    ),
                );
                link.note_failure(why);
                tokio::time::sleep(LOOKUP_RETRY).await;
            }
        }
    }
}

async fn look_once(client: &Client, settings: &SinkSettings) -> Result<Opened, Stop> {
    let stream = &settings.stream;
    let subject = &settings.subject;
    let request = serde_json::json!({ "subjects_filter": subject }).to_string();
    let info: StreamInfo = match answer(
        client
            .ask(format!("STREAM.INFO.{stream}"), Bytes::from(request))
            .await,
    ) {
        Answer::Found(info) => info,
        Answer::Missing => {
            return Err(Stop::Open(OpenError::Refused(format!(
                "stream {stream} does not exist on the NATS servers: create it (with \
                 allow_atomic: true) or name another"
            ))))
        }
        Answer::BadRequest(why) => {
            return Err(Stop::Open(OpenError::Refused(format!(
                "the NATS servers refused to describe stream {stream}: {why}"
            ))))
        }
        Answer::NotNow(why) => return Err(Stop::NotNow(format!("stream {stream}: {why}"))),
        Answer::Unreadable(why) => {
            return Err(Stop::Open(OpenError::Refused(format!(
                "the description of stream {stream} cannot be read: {why}"
            ))))
        }
    };
    let config = &info.config;
    if !config.subjects.iter().any(|f| subject_matches(f, subject)) {
        return Err(Stop::Open(OpenError::Refused(format!(
            "subject {subject} is not in stream {stream} (its subjects: {})",
            config.subjects.join(", ")
        ))));
    }
    if config.mirror.is_some() {
        return Err(Stop::Open(OpenError::Refused(format!(
            "stream {stream} is a mirror: it takes no publishes"
        ))));
    }
    if config.sealed {
        return Err(Stop::Open(OpenError::Refused(format!(
            "stream {stream} is sealed: it takes no publishes"
        ))));
    }
    if !config.allow_atomic && settings.unit == OffsetUnit::Batch {
        return Err(Stop::Open(OpenError::Refused(format!(
            "stream {stream} does not allow atomic batches (allow_atomic), and this source's \
             records (a NATS stream's) must be stored a whole batch at a time: set \
             allow_atomic: true on the stream (nats-server 2.12 or later)"
        ))));
    }
    let server_max = client.server_info().max_payload;
    let stream_max = usize::try_from(config.max_msg_size)
        .ok()
        .filter(|&m| m > 0)
        .unwrap_or(usize::MAX);
    let largest = server_max.min(stream_max);
    if largest <= 2 * HEADER_ROOM {
        return Err(Stop::Open(OpenError::Refused(format!(
            "stream {stream} takes messages of at most {largest} bytes: too few for a record \
             and its headers ({HEADER_ROOM} bytes)"
        ))));
    }
    let request = serde_json::json!({ "last_by_subj": subject }).to_string();
    let last: Option<Last> = match answer::<GotMessage>(
        client
            .ask(format!("STREAM.MSG.GET.{stream}"), Bytes::from(request))
            .await,
    ) {
        Answer::Found(got) => Some(got.message.last().map_err(|why| {
            Stop::Open(OpenError::Refused(format!(
                "the last message on {subject} cannot be read: {why}"
            )))
        })?),
        Answer::Missing => None,
        Answer::BadRequest(why) => {
            return Err(Stop::Open(OpenError::Refused(format!(
                "the NATS servers refused to read back the last message on {subject}: {why}"
            ))))
        }
        Answer::NotNow(why) => return Err(Stop::NotNow(format!("reading back {subject}: {why}"))),
        Answer::Unreadable(why) => {
            return Err(Stop::Open(OpenError::Refused(format!(
                "the last message on {subject} cannot be read: {why}"
            ))))
        }
    };
    let messages = info
        .state
        .subjects
        .as_ref()
        .and_then(|s| s.get(subject.as_str()).copied())
        .unwrap_or(0);
    let mut opened = Opened {
        messages,
        atomic: config.allow_atomic,
        record_limit: largest - HEADER_ROOM,
        ..Opened::default()
    };
    if let Some(last) = last {
        let Some(offset) = last.offset else {
            return Err(Stop::Open(OpenError::Mismatch(format!(
                "the last message on {subject} (stream sequence {}) was not written by shovel \
                 (it has no Shovel-Offset header): refusing to add records after it; use a \
                 subject of its own",
                last.seq
            ))));
        };
        opened.offset = offset;
        opened.source = last.source.unwrap_or_default();
        opened.sequence = last.seq;
    }
    Ok(opened)
}
