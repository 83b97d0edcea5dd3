//! The JetStream sink: records stored as messages in a NATS JetStream stream, exactly once,
//! in order, with the stream as the checkpoint.
//!
//! The shape is the store's: records are handed over without waiting (a bounded queue, in
//! messages' bytes, gives back-pressure), a write task on a runtime thread of its own publishes
//! them ([`writer`]), and [`Sink::close`] waits for every accepted record's acknowledgement
//! within a deadline, then says exactly what it could not deliver. Python learns of progress by
//! watching a file descriptor; no Rust thread calls into Python, and cancelling a wait in
//! Python abandons the wait, never a publish.
//!
//! - [`records`]: a handed batch cut into messages with their source offsets;
//! - [`protocol`]: headers, acknowledgements, errors, the read-back;
//! - [`open`]: connection, the stream's checks, the resume point;
//! - [`writer`]: atomic batches, one in flight, retried or settled by reading back.

pub mod open;
pub mod protocol;
pub mod records;
pub mod writer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::nats::connect::{Link, NatsConfig, OpenError};
use crate::nats::core::ACK_LATENCY_BOUNDS;
use crate::nats::events::Events;
use crate::notify::Notifier;
use crate::runtime::{Io, RuntimeThread};
use records::{Message, OffsetUnit};

/// Records accepted and not yet acknowledged, in atomic batches: enough to cut the next batch
/// while one is in flight, few enough that a stop drains in a moment.
const INFLIGHT_BATCHES: usize = 4;
/// How long the close gives the connection to send what it holds before it is dropped.
const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// The sink's settings, as Python parsed them.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The connection.
    pub config: NatsConfig,
    /// The stream's name.
    pub stream: String,
    /// The subject the records are published on.
    pub subject: String,
    /// Records per atomic batch (1 to [`protocol::MAX_BATCH`]).
    pub batch: usize,
    /// The most bytes of records accepted and not yet acknowledged.
    pub max_inflight_bytes: usize,
    /// What the source's offsets count.
    pub unit: OffsetUnit,
}

/// What the Python side is told (and the close waits for).
#[derive(Debug, Default)]
struct State {
    /// Accepted records not yet taken by the writer.
    queue: VecDeque<Message>,
    /// Their bytes.
    queued_bytes: usize,
    /// Records being published.
    inflight: usize,
    /// Their bytes.
    inflight_bytes: usize,
    /// The descriptor in effect.
    source: Option<Arc<str>>,
    /// Handed batches accepted so far.
    submitted: u64,
    /// The last handed batch every record of which is stored.
    durable: u64,
    /// Records stored in this run.
    records_durable: u64,
    /// Their bytes (newlines counted).
    bytes_durable: u64,
    /// The source offset the stream holds everything up to.
    committed_offset: u64,
    /// The stream sequence of the last message stored.
    committed_sequence: u64,
    /// No more records are accepted.
    closing: bool,
    /// The permanent error that ended the writes.
    failed: Option<String>,
    /// The write task has ended.
    writer_done: bool,
    /// The writer was started (an open that succeeded).
    writing: bool,
}

/// Counters read at scrape time.
#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    errors: AtomicU64,
    batches: AtomicU64,
    latency_buckets: Vec<AtomicU64>,
    latency_sum_us: AtomicU64,
}

/// State shared by the write task, the Python side and the close.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Wakes the close when the writer ends or stores.
    changed: Condvar,
    /// Wakes the writer when records come or the sink closes.
    wake: Notify,
    /// Wakes the event loop.
    python: Arc<Notifier>,
    counters: Counters,
    max_inflight_bytes: usize,
    max_inflight_records: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next batch to publish: up to `max` records (with the batch unit, whole
    /// handed batches only). `None` when nothing is waiting.
    fn take(&self, max: usize, unit: OffsetUnit) -> Option<Vec<Message>> {
        let mut s = self.lock();
        if s.queue.is_empty() || s.failed.is_some() {
            return None;
        }
        let mut n = max.min(s.queue.len());
        if unit == OffsetUnit::Batch {
            match s.queue.iter().take(n).rposition(|m| m.ends_submission) {
                Some(i) => n = i + 1,
                // A handed batch larger than an atomic batch: taken whole (the server then
                // says the batch is too large; Python refuses such sources at start).
                None => {
                    n = s
                        .queue
                        .iter()
                        .position(|m| m.ends_submission)
                        .map_or(s.queue.len(), |i| i + 1)
                }
            }
        }
        let batch: Vec<Message> = s.queue.drain(..n).collect();
        let bytes: usize = batch.iter().map(Message::stored_len).sum();
        s.queued_bytes -= bytes;
        s.inflight += batch.len();
        s.inflight_bytes += bytes;
        Some(batch)
    }

    /// `batch` is stored, its last message at stream sequence `seq`.
    fn stored(&self, batch: &[Message], seq: u64, took: Duration) {
        let bytes: usize = batch.iter().map(Message::stored_len).sum();
        {
            let mut s = self.lock();
            s.inflight -= batch.len();
            s.inflight_bytes -= bytes;
            s.records_durable += batch.len() as u64;
            s.bytes_durable += bytes as u64;
            if let Some(last) = batch.last() {
                s.committed_offset = last.offset;
                s.durable = if last.ends_submission {
                    last.submission
                } else {
                    last.submission - 1
                };
            }
            s.committed_sequence = seq;
            if s.queue.is_empty() && s.inflight == 0 {
                // Nothing held: every batch handed over is stored, the empty ones too.
                s.durable = s.submitted;
            }
        }
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in ACK_LATENCY_BOUNDS.iter().zip(&c.latency_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(inf) = c.latency_buckets.last() {
            inf.fetch_add(1, Ordering::Relaxed);
        }
        c.latency_sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.changed.notify_all();
        self.python.notify();
    }

    fn retried(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        self.python.notify();
    }

    fn fail(&self, why: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.failed.get_or_insert(why);
        drop(s);
        self.changed.notify_all();
        self.python.notify();
    }

    /// Closing, and nothing left to publish.
    fn finished(&self) -> bool {
        let s = self.lock();
        s.closing && s.queue.is_empty()
    }

    fn writer_done(&self) {
        self.lock().writer_done = true;
        self.changed.notify_all();
        self.python.notify();
    }
}

/// A point-in-time copy of the sink's counters (the `shovel_sink_*` metrics, and what the
/// service reads of any storage); Python's `SinkStats`.
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(frozen, get_all, skip_from_py_object, module = "shovel._native")
)]
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    /// Handed batches not yet wholly stored.
    pub inflight_writes: u64,
    /// Records accepted and not yet stored.
    pub inflight_records: u64,
    /// Their bytes.
    pub inflight_bytes: u64,
    /// Records stored in this run.
    pub records_durable: u64,
    /// Their bytes.
    pub bytes_durable: u64,
    /// The source offset the stream holds everything up to.
    pub committed_offset: u64,
    /// The stream sequence of the last message stored.
    pub committed_sequence: u64,
    /// Sends and read-backs tried again.
    pub retries: u64,
    /// Permanent errors (0 or 1).
    pub errors: u64,
    /// Batches stored.
    pub batches: u64,
    /// Always 0: the stream, not shovel, syncs.
    pub fsyncs: u64,
    /// The acknowledgement latency histogram's cumulative counts, one per bound of
    /// `NATS_ACK_LATENCY_BOUNDS`, then +Inf.
    pub ack_latency_buckets: Vec<u64>,
    /// Their sum, in seconds.
    pub ack_latency_sum: f64,
    /// The last handed batch every record of which is stored.
    pub durable_seq: u64,
}

/// What a close reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Every accepted record is stored; the offset the stream holds everything up to.
    Done(u64),
    /// The deadline passed with this many records not acknowledged.
    TimedOut(u64),
    /// A permanent error ended the writes (its words).
    Failed(String),
}

/// The open's outcome, once there is one.
#[derive(Debug, Default)]
struct OpenSlot {
    outcome: Option<Result<open::Opened, OpenError>>,
}

/// An open JetStream sink.
pub struct Sink {
    shared: Arc<Shared>,
    link: Arc<Link>,
    events: Arc<Events>,
    runtime: Mutex<Option<RuntimeThread>>,
    slot: Arc<Mutex<OpenSlot>>,
    client: Arc<Mutex<Option<Client>>>,
    closed: Mutex<Option<Closed>>,
}

impl Sink {
    /// Starts the runtime and the open (connection, the stream's checks, the read-back) in
    /// the background; [`Sink::opened`] says when it is done.
    pub fn start(settings: SinkSettings, writer_id: String) -> std::io::Result<Sink> {
        let python = Arc::new(Notifier::new()?);
        let events = Arc::new(Events::new(Some(python.clone())));
        let link = Link::new(events.clone());
        let counters = Counters {
            latency_buckets: (0..=ACK_LATENCY_BOUNDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            ..Counters::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            wake: Notify::new(),
            python: python.clone(),
            counters,
            max_inflight_bytes: settings.max_inflight_bytes,
            max_inflight_records: settings.batch.clamp(1, protocol::MAX_BATCH) * INFLIGHT_BATCHES,
        });
        let runtime = RuntimeThread::start("shovel-sink", Io::On)?;
        let slot = Arc::new(Mutex::new(OpenSlot::default()));
        let client_slot = Arc::new(Mutex::new(None));
        {
            let (shared, link, slot, client_slot) = (
                shared.clone(),
                link.clone(),
                slot.clone(),
                client_slot.clone(),
            );
            runtime.handle().spawn(async move {
                let outcome = open::open(&settings, &link).await;
                let result = match outcome {
                    Ok((client, opened)) => {
                        *client_slot.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(client.clone());
                        {
                            let mut s = shared.lock();
                            s.committed_offset = opened.offset;
                            s.committed_sequence = opened.sequence;
                            s.writing = true;
                        }
                        let writer = writer::Writer {
                            client,
                            link: link.clone(),
                            shared: shared.clone(),
                            stream: settings.stream.clone(),
                            subject: settings.subject.clone(),
                            batch: settings.batch.clamp(1, protocol::MAX_BATCH),
                            atomic: opened.atomic,
                            unit: settings.unit,
                            writer_id,
                            last_seq: opened.sequence,
                            sent: 0,
                            source_id: None,
                        };
                        tokio::spawn(writer.run());
                        Ok(opened)
                    }
                    Err(e) => Err(e),
                };
                slot.lock().unwrap_or_else(PoisonError::into_inner).outcome = Some(result);
                shared.python.notify();
            });
        }
        Ok(Sink {
            shared,
            link,
            events,
            runtime: Mutex::new(Some(runtime)),
            slot,
            client: client_slot,
            closed: Mutex::new(None),
        })
    }

    /// The open's outcome, once it is known.
    pub fn opened(&self) -> Option<Result<open::Opened, OpenError>> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .clone()
    }

    /// The descriptor to wake the event loop.
    pub fn notify_fd(&self) -> std::os::fd::RawFd {
        self.shared.python.fd()
    }

    /// Clears the wake-ups.
    pub fn drain_notifications(&self) {
        self.shared.python.drain();
    }

    /// The log lines said since the last call.
    pub fn take_events(&self) -> Vec<(crate::nats::events::Level, String)> {
        self.events.take()
    }

    /// Whether `records` more records of `len` bytes fit now (anything fits while nothing is
    /// held). Refused once closed or failed.
    pub fn has_room(&self, records: usize, len: usize) -> Result<bool, String> {
        let s = self.shared.lock();
        if let Some(why) = &s.failed {
            return Err(why.clone());
        }
        if s.closing {
            return Err("the sink is closed".into());
        }
        if !s.writing {
            return Err("the sink is not open".into());
        }
        let held = s.queued_bytes + s.inflight_bytes;
        let held_records = s.queue.len() + s.inflight;
        Ok(held_records == 0
            || (held + len <= self.shared.max_inflight_bytes
                && held_records + records <= self.shared.max_inflight_records))
    }

    /// Hands `parts` (`records` whole lines ending at `end_offset`) over, whether or not
    /// there is room (see [`Sink::has_room`]); returns its sequence number. Refused once
    /// closed or failed.
    pub fn submit(
        &self,
        parts: Vec<Bytes>,
        records: u64,
        end_offset: u64,
        source: Option<&str>,
        unit: OffsetUnit,
    ) -> Result<u64, String> {
        let mut s = self.shared.lock();
        if let Some(why) = &s.failed {
            return Err(why.clone());
        }
        if s.closing || !s.writing {
            return Err("the sink is not open".into());
        }
        if let Some(text) = source {
            s.source = Some(Arc::from(text));
        }
        let descriptor = s.source.clone().unwrap_or_else(|| Arc::from(""));
        let submission = s.submitted + 1;
        let messages = records::cut(parts, records, end_offset, unit, &descriptor, submission)?;
        s.submitted = submission;
        if messages.is_empty() {
            // A batch with no record moves the offset past what is set apart (a line kept in
            // rejected/). Only a message carries an offset into the stream: a record still
            // queued carries it; otherwise the next record's own offset covers it, and if
            // none comes, a restart reads that line again and keeps it again (once).
            if let Some(last) = s.queue.back_mut() {
                last.offset = last.offset.max(end_offset);
            } else if s.inflight == 0 {
                s.durable = submission;
            }
        }
        for m in messages {
            s.queued_bytes += m.stored_len();
            s.queue.push_back(m);
        }
        drop(s);
        self.shared.wake.notify_one();
        Ok(submission)
    }

    /// The counters now.
    pub fn stats(&self) -> SinkStats {
        let s = self.shared.lock();
        let c = &self.shared.counters;
        SinkStats {
            inflight_writes: s.submitted - s.durable,
            inflight_records: (s.queue.len() + s.inflight) as u64,
            inflight_bytes: (s.queued_bytes + s.inflight_bytes) as u64,
            records_durable: s.records_durable,
            bytes_durable: s.bytes_durable,
            committed_offset: s.committed_offset,
            committed_sequence: s.committed_sequence,
            retries: c.retries.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            fsyncs: 0,
            ack_latency_buckets: c
                .latency_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            ack_latency_sum: c.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            durable_seq: s.durable,
        }
    }

    /// The permanent error that ended the writes, if one did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    /// Stops accepting records, waits up to `timeout` for every accepted one to be stored,
    /// then closes the connection and stops the runtime. Blocking (call it without the GIL).
    /// Idempotent: a second call returns the first one's outcome.
    pub fn close(&self, timeout: Duration) -> Closed {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outcome) = &*closed {
            return outcome.clone();
        }
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        s.closing = true;
        self.shared.wake.notify_one();
        while s.writing && !s.writer_done && s.failed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            s = self
                .shared
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let outcome = if let Some(why) = &s.failed {
            Closed::Failed(why.clone())
        } else if s.writing && !s.writer_done {
            Closed::TimedOut((s.queue.len() + s.inflight) as u64)
        } else {
            Closed::Done(s.committed_offset)
        };
        drop(s);
        self.link.closing();
        if let Some(runtime) = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let client = self
                .client
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let (Some(client), Closed::Done(_)) = (client, &outcome) {
                // Every commit's answer is in: what the connection still holds (nothing that
                // matters) is given what is left of the deadline, at most a moment.
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(DRAIN_BOUND);
                let (tx, rx) = std::sync::mpsc::channel();
                runtime.handle().spawn(async move {
                    let _ = client.drain().await;
                    let _ = tx.send(());
                });
                let _ = rx.recv_timeout(left);
            }
            runtime.stop_and_join();
        }
        *closed = Some(outcome.clone());
        self.shared.python.notify();
        outcome
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Never blocks: the runtime thread is told to stop, not joined.
        if let Some(runtime) = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            runtime.stop_token().cancel();
        }
    }
}
