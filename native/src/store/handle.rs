//! `Store`: the thread-safe front of the store, used by the Python binding and by tests.
//!
//! Protocol: `open` recovers the directory and starts the writer on a runtime of its own;
//! `submit` hands a batch to the writer without waiting (or says the client is full); `close`
//! refuses new writes, waits for the writer to drain, fsync and checkpoint, then stops the
//! runtime. Close is idempotent and concurrent closers get the same outcome. Dropping an
//! unclosed `Store` never blocks: the writer drains in the background and stops its runtime.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::checkpoint::{validate_source, Checkpoint};
use super::error::{StoreError, StoreResult};
use super::recovery;
use super::shared::Shared;
use super::stats::StatsSnapshot;
use super::writer::{WriteRequest, Writer, WriterConfig, WriterOutcome};
use crate::buffers::{self, Part};
use crate::notify::Notifier;
use crate::runtime::{Io, RuntimeThread};

/// The bytes of a batch handed to [`Store::submit_data`].
#[derive(Debug)]
pub enum Data<'a> {
    /// Bytes the caller keeps: copied into the write.
    Borrowed(&'a [u8]),
    /// Buffers the write takes over (emptied on acceptance), with no copy.
    Owned(&'a mut Vec<Part>),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Borrowed(bytes) => bytes.len(),
            Data::Owned(parts) => buffers::total_len(parts),
        }
    }

    fn take(&mut self) -> Vec<Part> {
        match self {
            Data::Borrowed([]) => Vec::new(),
            Data::Borrowed(bytes) => vec![Part::copy_of(bytes)],
            Data::Owned(parts) => std::mem::take(*parts),
        }
    }

    /// Puts back what `take` took (a write that could not be handed over).
    fn restore(&mut self, taken: Vec<Part>) {
        if let Data::Owned(parts) = self {
            **parts = taken;
        }
    }
}

/// Everything `Store::open` needs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The output directory (created if missing).
    pub dir: PathBuf,
    /// Roll over to a new segment once the current one holds this many bytes.
    pub segment_max_bytes: u64,
    /// fsync at the latest this long after the first unsynced write.
    pub fsync_interval: Duration,
    /// fsync as soon as this many bytes are unsynced.
    pub fsync_max_bytes: u64,
    /// Refuse (report full) new writes while this many bytes are not yet durable.
    pub max_inflight_bytes: u64,
}

impl StoreConfig {
    fn validate(&self) -> StoreResult<()> {
        let positive = [
            ("segment_max_bytes", self.segment_max_bytes),
            ("fsync_max_bytes", self.fsync_max_bytes),
            ("max_inflight_bytes", self.max_inflight_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(StoreError::Config(format!("{name} must be positive")));
            }
        }
        if self.fsync_interval.is_zero() {
            return Err(StoreError::Config("fsync_interval must be positive".into()));
        }
        Ok(())
    }
}

/// The answer of [`Store::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Accepted with this sequence number; durable once `durable_seq` reaches it.
    Accepted(u64),
    /// Too many bytes in flight: wait for durable progress and submit again.
    Full,
}

/// What a successful close reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReport {
    /// The final checkpoint on disk.
    pub checkpoint: Checkpoint,
    /// Records made durable since open.
    pub records_durable: u64,
    /// Bytes made durable since open.
    pub bytes_durable: u64,
}

/// Why close did not end with everything durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseError {
    /// A write, fsync or checkpoint failed (the first error); what was durable before it stays.
    Failed(StoreError),
    /// The writer did not drain in time.
    TimedOut {
        /// Accepted writes that are not durable.
        writes: u64,
        /// Their records.
        records: u64,
        /// Their bytes.
        bytes: u64,
        /// The committed offset on disk when close gave up.
        committed_offset: u64,
    },
}

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseError::Failed(err) => err.fmt(f),
            CloseError::TimedOut {
                writes,
                records,
                bytes,
                committed_offset,
            } => write!(
                f,
                "close timed out: {records} records ({bytes} bytes in {writes} writes) are not durable; \
                 the committed offset stays at {committed_offset}"
            ),
        }
    }
}

/// The intake side: open or closed, and the channel to the writer.
#[derive(Debug)]
struct Gate {
    /// `None` once closing began: the writer then drains and stops.
    tx: Option<UnboundedSender<WriteRequest>>,
    /// Sequence number of the last accepted write.
    last_seq: u64,
    /// End offset of the last accepted write (offsets never go back).
    last_offset: u64,
}

/// The closing side, taken by one closer at a time.
#[derive(Debug)]
struct Closer {
    /// The runtime thread; `None` once stopped.
    runtime: Option<RuntimeThread>,
    /// Where the writer reports when drained.
    reply: mpsc::Receiver<WriterOutcome>,
    /// The outcome of the first close, returned to every later one.
    outcome: Option<Result<CloseReport, CloseError>>,
}

/// A durable, ordered, batched store; see the module docs.
#[derive(Debug)]
pub struct Store {
    gate: Mutex<Gate>,
    closer: Mutex<Closer>,
    shared: Arc<Shared>,
    config: StoreConfig,
    /// The checkpoint found at open.
    initial: Checkpoint,
    /// What recovery repaired at open.
    notes: Vec<String>,
    /// The process that opened the store; a forked child must not use it.
    pid: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Store {
    /// Locks and recovers `config.dir`, then starts the writer on a runtime thread of its own.
    /// Blocking (file I/O): call it with the GIL released.
    pub fn open(config: StoreConfig) -> StoreResult<Store> {
        config.validate()?;
        super::fault::init().map_err(StoreError::Config)?;
        let rec = recovery::recover(&config.dir)?;
        let notifier = Notifier::new()
            .map_err(|e| StoreError::io("create notification socket", &config.dir, &e))?;
        let shared = Arc::new(Shared::new(notifier));
        shared
            .stats
            .committed_offset
            .store(rec.checkpoint.committed_offset, Ordering::Release);
        shared
            .stats
            .stored_bytes_total
            .store(rec.checkpoint.bytes, Ordering::Release);
        let runtime = RuntimeThread::start("shovel-storage", Io::Off)
            .map_err(|e| StoreError::io("start storage thread", &config.dir, &e))?;
        let writer = Writer::new(
            config.dir.clone(),
            WriterConfig {
                segment_max_bytes: config.segment_max_bytes,
                fsync_interval: config.fsync_interval,
                fsync_max_bytes: config.fsync_max_bytes,
            },
            Arc::clone(&shared),
            rec.lock,
            rec.segment,
            rec.checkpoint.clone(),
        );
        let (tx, rx) = unbounded_channel();
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let stop = runtime.stop_token();
        let supervised = Arc::clone(&shared);
        let handle = runtime.handle().clone();
        runtime.handle().spawn(async move {
            // Stops the runtime once the writer is done, however it ends (a panic included).
            let _stop_when_done = stop.drop_guard();
            if let Err(join) = handle.spawn(writer.run(rx, reply_tx)).await {
                let msg = if join.is_panic() {
                    "the writer task panicked"
                } else {
                    "the writer task was cancelled"
                };
                supervised.fail(StoreError::Panic(msg.to_string()));
            }
        });
        Ok(Store {
            gate: Mutex::new(Gate {
                tx: Some(tx),
                last_seq: 0,
                last_offset: rec.checkpoint.committed_offset,
            }),
            closer: Mutex::new(Closer {
                runtime: Some(runtime),
                reply: reply_rx,
                outcome: None,
            }),
            shared,
            config,
            initial: rec.checkpoint,
            notes: rec.notes,
            pid: std::process::id(),
        })
    }

    fn check_pid(&self) -> StoreResult<()> {
        if std::process::id() != self.pid {
            return Err(StoreError::Invalid(format!(
                "this storage client was opened in process {} and cannot be used after fork() \
                 (this is process {}); open a new client in the child",
                self.pid,
                std::process::id()
            )));
        }
        Ok(())
    }

    /// Hands a batch to the writer without waiting. `source`, when given, is the source
    /// descriptor from this write on (kept in the checkpoints that cover it). Errors: the first
    /// storage error once one happened; [`StoreError::Closed`] after close;
    /// [`StoreError::Invalid`] for an offset that goes back or a descriptor that is not one line.
    pub fn submit(
        &self,
        data: &[u8],
        records: u64,
        end_offset: u64,
        source: Option<&str>,
    ) -> StoreResult<Submitted> {
        self.submit_data(Data::Borrowed(data), records, end_offset, source)
    }

    /// [`Store::submit`] for bytes given either borrowed (copied once accepted) or as owned
    /// parts (moved into the write once accepted, left in place when the store is full).
    pub fn submit_data(
        &self,
        mut data: Data<'_>,
        records: u64,
        end_offset: u64,
        source: Option<&str>,
    ) -> StoreResult<Submitted> {
        self.check_pid()?;
        if let Some(text) = source {
            validate_source(text).map_err(StoreError::Invalid)?;
        }
        if let Some(err) = self.shared.first_error() {
            return Err(err);
        }
        let mut gate = lock(&self.gate);
        let Some(tx) = gate.tx.as_ref() else {
            return Err(StoreError::Closed);
        };
        if end_offset < gate.last_offset {
            return Err(StoreError::Invalid(format!(
                "end_offset {end_offset} is before the previous one ({}); offsets only move forward",
                gate.last_offset
            )));
        }
        let stats = &self.shared.stats;
        let len = data.len() as u64;
        let inflight = stats.inflight_bytes.load(Ordering::Acquire);
        if inflight > 0 && inflight + len > self.config.max_inflight_bytes {
            return Ok(Submitted::Full);
        }
        if !self.shared.hold(len) {
            return Ok(Submitted::Full);
        }
        let seq = gate.last_seq + 1;
        stats.inflight_writes.fetch_add(1, Ordering::AcqRel);
        stats.inflight_bytes.fetch_add(len, Ordering::AcqRel);
        stats.inflight_records.fetch_add(records, Ordering::AcqRel);
        let req = WriteRequest {
            seq,
            data: data.take(),
            records,
            end_offset,
            source: source.map(Arc::from),
        };
        if let Err(refused) = tx.send(req) {
            // The writer is gone (it panicked). The write was not handed over: its bytes go
            // back to the caller and it is not counted; report what the writer left.
            data.restore(refused.0.data);
            self.shared.release(len);
            stats.inflight_writes.fetch_sub(1, Ordering::AcqRel);
            stats.inflight_bytes.fetch_sub(len, Ordering::AcqRel);
            stats.inflight_records.fetch_sub(records, Ordering::AcqRel);
            return Err(self
                .shared
                .first_error()
                .unwrap_or_else(|| StoreError::Panic("the writer stopped".into())));
        }
        gate.last_seq = seq;
        gate.last_offset = end_offset;
        Ok(Submitted::Accepted(seq))
    }

    /// Refuses new writes, waits up to `timeout` for everything accepted to be durable and
    /// checkpointed, then stops the runtime. Blocking: call it with the GIL released. A
    /// concurrent caller waits for the first close to finish (whatever its own timeout) and
    /// gets the same outcome.
    pub fn close(&self, timeout: Duration) -> Result<CloseReport, CloseError> {
        self.check_pid().map_err(CloseError::Failed)?;
        let mut closer = lock(&self.closer);
        if let Some(outcome) = &closer.outcome {
            return outcome.clone();
        }
        // Dropping the sender is the "no more writes" message: the writer drains what is queued.
        lock(&self.gate).tx = None;
        let outcome = match closer.reply.recv_timeout(timeout) {
            Ok(Ok(checkpoint)) => {
                let s = self.shared.stats.snapshot();
                Ok(CloseReport {
                    checkpoint,
                    records_durable: s.records_durable,
                    bytes_durable: s.bytes_durable,
                })
            }
            Ok(Err(err)) => Err(CloseError::Failed(err)),
            Err(RecvTimeoutError::Timeout) => {
                // Stop the runtime first: what is counted below is then final, except for a
                // blocking job left running, which can only move the checkpoint forward.
                if let Some(runtime) = closer.runtime.take() {
                    runtime.stop_and_join();
                }
                let s = self.shared.stats.snapshot();
                Err(CloseError::TimedOut {
                    writes: s.inflight_writes,
                    records: s.inflight_records,
                    bytes: s.inflight_bytes,
                    committed_offset: s.committed_offset,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The writer is gone without a report (it panicked): its supervisor records
                // why and then stops the runtime, so wait for that rather than cut it short.
                if let Some(runtime) = closer.runtime.take() {
                    runtime.join();
                }
                Err(CloseError::Failed(
                    self.shared.first_error().unwrap_or_else(|| {
                        StoreError::Panic("the writer stopped without a report".into())
                    }),
                ))
            }
        };
        if let Some(runtime) = closer.runtime.take() {
            runtime.stop_and_join();
        }
        closer.outcome = Some(outcome.clone());
        outcome
    }

    /// Whether close has begun.
    pub fn is_closed(&self) -> bool {
        lock(&self.gate).tx.is_none()
    }

    /// The counters, now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The first storage error, if any.
    pub fn error(&self) -> Option<StoreError> {
        self.shared.first_error()
    }

    /// The checkpoint found when the store was opened (after recovery).
    pub fn initial_checkpoint(&self) -> &Checkpoint {
        &self.initial
    }

    /// What recovery repaired at open, one sentence each.
    pub fn recovery_notes(&self) -> &[String] {
        &self.notes
    }

    /// The file descriptor that becomes readable after durable progress or an error.
    pub fn notify_fd(&self) -> i32 {
        self.shared.notifier.fd()
    }

    /// Takes the messages queued for the service's log (retries).
    pub fn take_events(&self) -> Vec<String> {
        self.shared.take_events()
    }

    /// Consumes pending wake-ups.
    pub fn drain_notifications(&self) -> usize {
        self.shared.notifier.drain()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
}
