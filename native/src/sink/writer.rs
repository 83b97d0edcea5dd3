//! The sink's write task: takes the records handed over, in order, publishes them as atomic
//! batches (one in flight: each batch names the sequence the previous one ended at), and
//! counts them durable when the stream has acknowledged them.
//!
//! Exactly once, without the duplicate window: a batch is stored whole or not at all, and only
//! right after the last message the writer knows of. When the outcome of a commit is not known
//! (no answer in time, the connection lost, the server saying the subject moved on), the writer
//! reads the last message on the subject back: if it is this batch's last (this run's writer
//! id, the batch's last offset), the batch is stored; if it is still the message before, the
//! batch is sent again; anything else is another writer, and the run ends rather than
//! interleave. Errors that can pass are retried with the store's backoff, each said and
//! counted; the others end the run with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, PublishErrorKind, Request, RequestErrorKind};
use bytes::Bytes;

use super::protocol::{self, headers, verdict, GotMessage, Verdict};
use super::records::{Message, OffsetUnit};
use super::Shared;
use crate::nats::connect::{Link, REQUEST_TIMEOUT};
use crate::nats::consumer::{answer, Answer, Api};
use crate::nats::events::Level;
use crate::store::writer::backoff;

/// How an answer of no responders is said (and known again).
const NO_RESPONDERS: &str = "no responders";
/// After this many answers of no responders in a row, the writer asks whether the stream is
/// still there.
const NO_RESPONDERS_LOOK: u32 = 3;
/// The longest a batch's sends may take before its outcome is unknown (a connection that is
/// down holds sends back).
const SEND_BOUND: Duration = Duration::from_secs(10);

/// What the write task works with.
pub struct Writer {
    /// The connection.
    pub client: Client,
    /// Its callbacks' view (denials, lines).
    pub link: Arc<Link>,
    /// The sink's state.
    pub shared: Arc<Shared>,
    /// The stream.
    pub stream: String,
    /// The subject.
    pub subject: String,
    /// Records per batch.
    pub batch: usize,
    /// Whether batches are atomic (else one record each).
    pub atomic: bool,
    /// What the source's offsets count.
    pub unit: OffsetUnit,
    /// This run's id, on the last message of each batch.
    pub writer_id: String,
    /// The stream sequence of the last message on the subject.
    pub last_seq: u64,
    /// Batches sent (for their ids).
    pub sent: u64,
    /// The last descriptor's id in `Nats-Msg-Id` (a hash, made once per descriptor).
    pub source_id: Option<(Arc<str>, String)>,
}

impl Writer {
    /// Publishes until the sink closes and everything handed over is stored, or a permanent
    /// error ends the run.
    pub async fn run(mut self) {
        let per_batch = if self.atomic { self.batch } else { 1 };
        let shared = self.shared.clone();
        loop {
            let wake = shared.wake.notified();
            match shared.take(per_batch, self.unit) {
                Some(batch) => {
                    let started = Instant::now();
                    match self.store(&batch).await {
                        Ok(seq) => shared.stored(&batch, seq, started.elapsed()),
                        Err(why) => {
                            shared.fail(why);
                            break;
                        }
                    }
                }
                None if shared.finished() => break,
                None => wake.await,
            }
        }
        self.shared.writer_done();
    }

    /// Stores `batch`; returns the stream sequence of its last message.
    async fn store(&mut self, batch: &[Message]) -> Result<u64, String> {
        let mut attempt = 0;
        let mut no_responders = 0;
        loop {
            let sent = match tokio::time::timeout(SEND_BOUND, self.send(batch)).await {
                Ok(v) => v,
                Err(_) => Verdict::Unsure(format!(
                    "the batch was not sent within {}s",
                    SEND_BOUND.as_secs()
                )),
            };
            let outcome = match sent {
                Verdict::Unsure(why) => self.settle(batch, why, false).await?,
                Verdict::Duplicate(why) => self.settle(batch, why, true).await?,
                v => v,
            };
            if matches!(&outcome, Verdict::Retry(why) if why.starts_with(NO_RESPONDERS)) {
                no_responders += 1;
                if no_responders % NO_RESPONDERS_LOOK == 0 {
                    self.stream_still_there().await?;
                }
            } else {
                no_responders = 0;
            }
            match outcome {
                Verdict::Stored(seq) => {
                    self.last_seq = seq;
                    return Ok(seq);
                }
                Verdict::Fatal(why) => return Err(why),
                Verdict::Retry(why) | Verdict::Unsure(why) | Verdict::Duplicate(why) => {
                    self.pause(&mut attempt, "the publish", |wait, attempt| {
                        format!(
                            "NATS sink: {why}; sending the batch of {} records again in {} ms \
                             (attempt {})",
                            batch.len(),
                            wait.as_millis(),
                            attempt + 1
                        )
                    })
                    .await?;
                }
            }
        }
    }

    /// Sends `batch` once: every message but the last as a plain publish, the last as the
    /// commit request; returns what its answer says.
    async fn send(&mut self, batch: &[Message]) -> Verdict {
        self.sent += 1;
        let batch_id = self
            .atomic
            .then(|| format!("{}-{}", self.writer_id, self.sent));
        let count = batch.len();
        for (i, message) in batch.iter().enumerate() {
            let id = self.msg_id(message);
            let h = headers(
                batch_id.as_deref(),
                i,
                count,
                self.last_seq,
                message.offset,
                &id,
                &message.source,
                &self.writer_id,
            );
            if i + 1 < count {
                if let Err(e) = self
                    .client
                    .publish_with_headers(self.subject.clone(), h, message.payload.clone())
                    .await
                {
                    return match e.kind() {
                        PublishErrorKind::MaxPayloadExceeded => Verdict::Fatal(format!(
                            "a record of {} bytes is larger than the server takes: {e}",
                            message.payload.len()
                        )),
                        _ => Verdict::Retry(format!("a publish failed: {e}")),
                    };
                }
                continue;
            }
            let request = Request::new()
                .headers(h)
                .payload(message.payload.clone())
                .timeout(Some(REQUEST_TIMEOUT));
            return match self
                .client
                .send_request(self.subject.clone(), request)
                .await
            {
                Ok(reply) => verdict(&reply.payload, &self.stream, batch_id.as_deref(), count),
                Err(e) => match e.kind() {
                    RequestErrorKind::TimedOut => Verdict::Unsure(format!(
                        "no acknowledgement within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    )),
                    RequestErrorKind::NoResponders => {
                        Verdict::Retry("no responders (the stream has no leader now)".into())
                    }
                    RequestErrorKind::MaxPayloadExceeded => Verdict::Fatal(format!(
                        "a record of {} bytes is larger than the server takes: {e}",
                        message.payload.len()
                    )),
                    _ => Verdict::Unsure(format!("the commit failed: {e}")),
                },
            };
        }
        Verdict::Retry("an empty batch".into())
    }

    /// Ends the run if the stream is gone (after answers of no responders: a stream deleted
    /// while shovel writes gets those, as one electing a leader does).
    async fn stream_still_there(&self) -> Result<(), String> {
        let found = answer::<serde_json::Value>(
            self.client
                .ask(format!("STREAM.INFO.{}", self.stream), Bytes::new())
                .await,
        );
        match found {
            Answer::Missing => Err(format!(
                "stream {} no longer exists on the NATS servers",
                self.stream
            )),
            _ => Ok(()),
        }
    }

    /// Finds out whether `batch` was stored, by reading back the last message on the subject.
    /// Retries the read-back itself until it is answered. `duplicate`: the server said it had
    /// the batch's message ids already.
    async fn settle(
        &mut self,
        batch: &[Message],
        why: String,
        duplicate: bool,
    ) -> Result<Verdict, String> {
        let Some(end) = batch.last() else {
            return Ok(Verdict::Retry(why));
        };
        let mut attempt = 0;
        loop {
            let request = serde_json::json!({ "last_by_subj": self.subject }).to_string();
            let read = answer::<GotMessage>(
                self.client
                    .ask(
                        format!("STREAM.MSG.GET.{}", self.stream),
                        Bytes::from(request),
                    )
                    .await,
            );
            let last = match read {
                Answer::Found(got) => match got.message.last() {
                    Ok(last) => Some(last),
                    Err(e) => {
                        return Err(format!(
                            "the last message on {} cannot be read: {e}",
                            self.subject
                        ))
                    }
                },
                Answer::Missing => None,
                Answer::BadRequest(e) | Answer::Unreadable(e) => {
                    return Err(format!("reading back {} failed: {e}", self.subject))
                }
                Answer::NotNow(e) => {
                    self.pause(&mut attempt, "the sink's request", |wait, _| {
                        format!(
                            "NATS sink: {why}, and reading back {} failed: {e}; trying again \
                             in {} ms",
                            self.subject,
                            wait.as_millis()
                        )
                    })
                    .await?;
                    continue;
                }
            };
            let seq = last.as_ref().map_or(0, |l| l.seq);
            return Ok(match last {
                Some(l)
                    if l.writer.as_deref() == Some(self.writer_id.as_str())
                        && l.offset == Some(end.offset)
                        && seq > self.last_seq =>
                {
                    Verdict::Stored(seq)
                }
                _ if seq == self.last_seq && duplicate => Verdict::Fatal(format!(
                    "the stream already holds messages with the ids of these records \
                     (Nats-Msg-Id), but not on {}: the subject was emptied, or this source \
                     went to another subject of the stream, within the stream's duplicate \
                     window; wait until the window has passed, or use another subject ({why})",
                    self.subject
                )),
                _ if seq == self.last_seq => Verdict::Retry(why),
                Some(_) if seq < self.last_seq => Verdict::Fatal(format!(
                    "messages were removed from {} while this shovel wrote there: the last \
                     one is now stream sequence {seq}, before the {} it stored last; \
                     refusing to go on",
                    self.subject, self.last_seq
                )),
                Some(l) => Verdict::Fatal(format!(
                    "another writer stored on {} after this shovel: the last message there \
                     (stream sequence {seq}, offset {}, writer {}) is not ours, where sequence \
                     {} was; two writers on one subject would interleave, so this one stops \
                     (give each shovel a subject of its own)",
                    self.subject,
                    l.offset.map_or_else(|| "none".into(), |o| o.to_string()),
                    l.writer.as_deref().unwrap_or("not shovel"),
                    self.last_seq
                )),
                None => Verdict::Fatal(format!(
                    "the messages on {} were removed while this shovel wrote there (the last \
                     one it stored was stream sequence {}): refusing to go on",
                    self.subject, self.last_seq
                )),
            });
        }
    }
}

impl Writer {
    /// Before trying again: ends the run if the server denied `what` (a denied request gets
    /// no answer, only a permissions violation); else counts the retry, says `line(wait,
    /// attempt)` and waits the store's backoff for the next attempt.
    async fn pause(
        &self,
        attempt: &mut u32,
        what: &str,
        line: impl FnOnce(Duration, u32) -> String,
    ) -> Result<(), String> {
        if let Some(denied) = self.link.denied() {
            return Err(format!("the NATS server denied {what}: {denied}"));
        }
        *attempt += 1;
        self.shared.retried();
        let wait = backoff((*attempt).min(16));
        self.link.events().say(Level::Warning, line(wait, *attempt));
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// The `Nats-Msg-Id` of `message`: its source's id on this subject and its offset (and,
    /// where records of a batch share an offset, its place in the batch).
    fn msg_id(&mut self, message: &Message) -> String {
        let known = matches!(&self.source_id, Some((d, _)) if Arc::ptr_eq(d, &message.source));
        if !known {
            let id = protocol::source_id(&self.subject, &message.source);
            self.source_id = Some((message.source.clone(), id));
        }
        let source = self.source_id.as_ref().map_or("", |(_, id)| id.as_str());
        match self.unit {
            OffsetUnit::Batch => format!("{source}:{}.{}", message.offset, message.index),
            _ => format!("{source}:{}", message.offset),
        }
    }
}
