//! The writer task: the one owner of the open segment.
//!
//! It appends batches in submission order, groups fsyncs (by bytes or by time), and after each
//! fsync persists a checkpoint and only then publishes the new durable watermark. An fsync runs
//! on a blocking thread while the writer keeps appending: the fsync covers every byte written
//! before it started, which is exactly the watermark captured with it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use super::checkpoint::{self, Checkpoint};
use super::error::{StoreError, StoreResult};
use super::fault::{self, Point};
use super::segment;
use super::shared::Shared;
use crate::buffers::{self, Part};

/// Retries after the first attempt of a failed append or checkpoint. fsync is never retried: after
/// a failed fsync the kernel may have dropped the dirty pages, so a later "successful" fsync
/// would prove nothing.
pub const RETRIES: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Whether an error may go away by itself: an I/O error of the device, an interrupted or busy
/// call, or a full disk or quota that space being freed can cure. A read-only or missing
/// directory, a permission problem or a bad argument will not: those fail at once.
pub fn retryable(err: &StoreError) -> bool {
    matches!(err, StoreError::Io { errno: Some(errno), .. } if retryable_errno(*errno))
}

/// Whether a failed call with this errno is worth retrying (see `retryable`); the Python side
/// asks the same of its own file writes (rejected lines).
pub fn retryable_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINTR
            | libc::EIO
            | libc::EAGAIN
            | libc::EBUSY
            | libc::ENOSPC
            | libc::ETIMEDOUT
            | libc::EDQUOT
    )
}

/// The wait before retry number `attempt` (from 1): doubling from 50 ms, at most 2 s.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
}

/// Appends `data`; on failure cuts the segment back to `keep_len`, so that neither a retry nor
/// recovery ever sees a partial batch. The error is retryable only if that cut succeeded.
fn append(
    file: &File,
    path: &Path,
    data: &[Part],
    keep_len: u64,
) -> Result<(), (StoreError, bool)> {
    let res = fault::hit(Point::BeforeWrite).and_then(|()| {
        data.iter()
            .try_for_each(|part| (&*file).write_all(part.as_slice()))
    });
    match res {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = StoreError::io("write segment", path, &e);
            let cut = file.set_len(keep_len).is_ok();
            Err((err, cut))
        }
    }
}

/// `checkpoint::persist` with bounded retries (blocking). The previous checkpoint stays valid
/// until a rename succeeds, so retrying is always safe.
fn persist_with_retries(dir: &Path, cp: &Checkpoint, shared: &Shared) -> StoreResult<()> {
    let mut attempt = 0;
    loop {
        match checkpoint::persist(dir, cp) {
            Ok(()) => return Ok(()),
            Err(err) if attempt < RETRIES && retryable(&err) => {
                attempt += 1;
                let wait = backoff(attempt);
                shared.stats.retries.fetch_add(1, Ordering::AcqRel);
                shared.note(format!(
                    "{err}; retrying ({attempt}/{RETRIES}) in {} ms",
                    wait.as_millis()
                ));
                std::thread::sleep(wait);
            }
            Err(err) => return Err(err),
        }
    }
}

/// One batch of records handed to the writer.
#[derive(Debug)]
pub struct WriteRequest {
    /// Position in submission order, from 1.
    pub seq: u64,
    /// The records' bytes, each ending with `\n`, in order.
    pub data: Vec<Part>,
    /// How many records `data` holds.
    pub records: u64,
    /// Source offset just past the last record of the batch.
    pub end_offset: u64,
    /// A new source descriptor that takes effect with this write (kept in the checkpoints
    /// that cover it); `None`: unchanged.
    pub source: Option<Arc<str>>,
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Start a new segment once the current one holds at least this many bytes.
    pub segment_max_bytes: u64,
    /// fsync at the latest this long after the first unsynced write.
    pub fsync_interval: Duration,
    /// fsync as soon as this many bytes are unsynced.
    pub fsync_max_bytes: u64,
}

/// A position in the written stream: the writes up to `seq` and the checkpoint describing them.
#[derive(Debug, Clone, Default)]
struct Watermark {
    seq: u64,
    cp: Checkpoint,
}

/// A written write waiting for its fsync, kept to release its in-flight counts.
#[derive(Debug)]
struct Pending {
    seq: u64,
    bytes: u64,
    records: u64,
}

/// The writer's state; see the module docs.
pub struct Writer {
    /// The output directory (checkpoint lives here).
    dir: PathBuf,
    /// Its segments sub-directory.
    seg_dir: PathBuf,
    config: WriterConfig,
    shared: Arc<Shared>,
    /// The directory lock. Every blocking job holds a clone, so the directory stays locked
    /// until the last write, fsync or checkpoint is over, even one left running after a
    /// close timeout.
    lock: Arc<File>,
    /// The current segment, shared with the blocking threads that write and fsync it.
    file: Arc<File>,
    /// Everything appended so far (not necessarily durable).
    written: Watermark,
    /// Everything covered by the last persisted checkpoint.
    durable: Watermark,
    /// Written writes not yet durable, oldest first.
    pending: VecDeque<Pending>,
    /// When the oldest unsynced write was appended; `None` when all is synced or syncing.
    dirty_since: Option<Instant>,
    /// A write failed after earlier writes succeeded: make those durable once more.
    salvage: bool,
    /// An fsync failed: nothing written since the last checkpoint may be trusted, so no
    /// salvage fsync is ever attempted (a second fsync could "succeed" on dropped pages).
    fsync_failed: bool,
}

/// What the writer reports when it has drained: the final checkpoint, or the first error.
pub type WriterOutcome = StoreResult<Checkpoint>;

async fn wait_job<T>(job: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match job {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

fn panic_message(err: JoinError) -> StoreError {
    if err.is_panic() {
        let payload = err.into_panic();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        StoreError::Panic(msg)
    } else {
        StoreError::Panic("blocking task was cancelled".to_string())
    }
}

/// Why a sync job failed: an fsync failure taints everything unsynced; other failures do not.
#[derive(Debug)]
enum SyncError {
    Fsync(StoreError),
    Other(StoreError),
}

type SyncJob = JoinHandle<Result<Watermark, SyncError>>;

impl Writer {
    /// A writer appending to `file`, whose state is exactly `cp` (as left by recovery).
    pub fn new(
        dir: PathBuf,
        config: WriterConfig,
        shared: Arc<Shared>,
        lock: File,
        file: File,
        cp: Checkpoint,
    ) -> Writer {
        let mark = Watermark { seq: 0, cp };
        Writer {
            seg_dir: dir.join(segment::SEGMENTS_DIR),
            dir,
            config,
            shared,
            lock: Arc::new(lock),
            file: Arc::new(file),
            written: mark.clone(),
            durable: mark,
            pending: VecDeque::new(),
            dirty_since: None,
            salvage: false,
            fsync_failed: false,
        }
    }

    fn unsynced(&self) -> bool {
        self.written.seq > self.durable.seq
    }

    fn segment_path(&self) -> PathBuf {
        segment::segment_path(&self.seg_dir, self.written.cp.segment)
    }

    /// Runs until `rx` is closed and drained, then reports on `reply`.
    pub async fn run(
        mut self,
        mut rx: UnboundedReceiver<WriteRequest>,
        reply: std::sync::mpsc::SyncSender<WriterOutcome>,
    ) {
        let mut job: Option<SyncJob> = None;
        let mut draining = false;
        loop {
            let failed = self.shared.failed();
            let salvage = self.salvage && !self.fsync_failed;
            if job.is_none() && self.unsynced() && (!failed || salvage) {
                let due = draining
                    || salvage
                    || self.written.cp.bytes - self.durable.cp.bytes >= self.config.fsync_max_bytes
                    || self
                        .dirty_since
                        .is_some_and(|t| t.elapsed() >= self.config.fsync_interval);
                if due {
                    self.salvage = false;
                    job = Some(self.start_sync());
                }
            }
            if draining && job.is_none() && (!self.unsynced() || self.shared.failed()) {
                break;
            }
            let deadline = self
                .dirty_since
                .map(|t| t + self.config.fsync_interval)
                .filter(|_| job.is_none() && !draining && !self.shared.failed());
            tokio::select! {
                res = wait_job(&mut job), if job.is_some() => {
                    job = None;
                    self.on_synced(res);
                }
                req = rx.recv(), if !draining => match req {
                    Some(req) => self.write(req, &mut job).await,
                    None => draining = true,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
        }
        let outcome = match self.shared.first_error() {
            Some(err) => Err(err),
            None => Ok(self.durable.cp.clone()),
        };
        let _ = reply.send(outcome);
    }

    fn start_sync(&mut self) -> SyncJob {
        let mark = self.written.clone();
        let file = Arc::clone(&self.file);
        let dir = self.dir.clone();
        let seg_path = self.segment_path();
        let shared = Arc::clone(&self.shared);
        let lock = Arc::clone(&self.lock);
        self.dirty_since = None;
        tokio::task::spawn_blocking(move || {
            let _locked = lock;
            fault::hit(Point::BeforeFsync)
                .and_then(|()| file.sync_data())
                .map_err(|e| SyncError::Fsync(StoreError::io("fsync segment", &seg_path, &e)))?;
            fault::hit(Point::AfterFsync)
                .map_err(|e| SyncError::Other(StoreError::io("write checkpoint", &dir, &e)))?;
            persist_with_retries(&dir, &mark.cp, &shared).map_err(SyncError::Other)?;
            // The checkpoint is on disk: say so even if this job outlives its writer.
            shared
                .stats
                .committed_offset
                .store(mark.cp.committed_offset, Ordering::Release);
            Ok(mark)
        })
    }

    fn on_synced(&mut self, res: Result<Result<Watermark, SyncError>, JoinError>) {
        match res {
            Ok(Ok(mark)) => self.publish(mark),
            Ok(Err(SyncError::Fsync(err))) => {
                self.fsync_failed = true;
                self.fail(err);
            }
            Ok(Err(SyncError::Other(err))) => self.fail(err),
            Err(join) => {
                self.fsync_failed = true;
                self.fail(panic_message(join));
            }
        }
    }

    /// Makes `mark` the durable watermark: counters move, then the event loop is woken.
    fn publish(&mut self, mark: Watermark) {
        let stats = &self.shared.stats;
        let (mut writes, mut bytes, mut records) = (0u64, 0u64, 0u64);
        while self.pending.front().is_some_and(|p| p.seq <= mark.seq) {
            if let Some(p) = self.pending.pop_front() {
                writes += 1;
                bytes += p.bytes;
                records += p.records;
            }
        }
        stats.records_durable.fetch_add(records, Ordering::AcqRel);
        stats.bytes_durable.fetch_add(bytes, Ordering::AcqRel);
        stats
            .committed_offset
            .store(mark.cp.committed_offset, Ordering::Release);
        stats
            .stored_bytes_total
            .store(mark.cp.bytes, Ordering::Release);
        stats.fsyncs.fetch_add(1, Ordering::AcqRel);
        stats.inflight_records.fetch_sub(records, Ordering::AcqRel);
        stats.inflight_bytes.fetch_sub(bytes, Ordering::AcqRel);
        stats.inflight_writes.fetch_sub(writes, Ordering::AcqRel);
        stats.durable_seq.store(mark.seq, Ordering::Release);
        self.durable = mark;
        self.shared.notifier.notify();
    }

    fn fail(&mut self, err: StoreError) {
        self.shared.fail(err);
    }

    async fn write(&mut self, req: WriteRequest, job: &mut Option<SyncJob>) {
        let len = buffers::total_len(&req.data) as u64;
        self.write_held(req, len, job).await;
        self.shared.release(len);
    }

    async fn write_held(&mut self, req: WriteRequest, len: u64, job: &mut Option<SyncJob>) {
        if self.shared.failed() {
            // Not written: it stays counted in flight, i.e. not durable, which is the truth.
            return;
        }
        if self.written.cp.segment_len >= self.config.segment_max_bytes && len > 0 {
            self.rollover(job).await;
            if self.shared.failed() {
                return;
            }
        }
        let data = Arc::new(req.data);
        let mut attempt = 0;
        let res = loop {
            let file = Arc::clone(&self.file);
            let path = self.segment_path();
            let chunk = Arc::clone(&data);
            let keep_len = self.written.cp.segment_len;
            let lock = Arc::clone(&self.lock);
            let res = tokio::task::spawn_blocking(move || {
                let _locked = lock;
                append(&file, &path, &chunk, keep_len)
            })
            .await;
            match res {
                Ok(Err((err, true))) if attempt < RETRIES && retryable(&err) => {
                    attempt += 1;
                    let wait = backoff(attempt);
                    self.shared.stats.retries.fetch_add(1, Ordering::AcqRel);
                    self.shared.note(format!(
                        "{err}; retrying ({attempt}/{RETRIES}) in {} ms",
                        wait.as_millis()
                    ));
                    tokio::time::sleep(wait).await;
                }
                Ok(Err((err, _))) => break Ok(Err(err)),
                Ok(Ok(())) => break Ok(Ok(())),
                Err(join) => break Err(join),
            }
        };
        // Written or not, the bytes are done with: their buffers serve the next reads.
        if let Ok(parts) = Arc::try_unwrap(data) {
            parts.into_iter().for_each(Part::recycle);
        }
        match res {
            Ok(Ok(())) => {
                let cp = &mut self.written.cp;
                cp.committed_offset = req.end_offset;
                cp.records += req.records;
                cp.bytes += len;
                cp.segment_len += len;
                if let Some(source) = req.source {
                    cp.source = source;
                }
                self.written.seq = req.seq;
                self.pending.push_back(Pending {
                    seq: req.seq,
                    bytes: len,
                    records: req.records,
                });
                self.dirty_since.get_or_insert_with(Instant::now);
            }
            Ok(Err(err)) => {
                self.salvage = self.unsynced();
                self.fail(err);
            }
            Err(join) => self.fail(panic_message(join)),
        }
    }

    /// Seals the current segment (fsync), creates the next one, and checkpoints the switch.
    async fn rollover(&mut self, job: &mut Option<SyncJob>) {
        if let Some(handle) = job.take() {
            let res = handle.await;
            self.on_synced(res);
            if self.shared.failed() {
                return;
            }
        }
        let old = Arc::clone(&self.file);
        let old_path = self.segment_path();
        let seg_dir = self.seg_dir.clone();
        let dir = self.dir.clone();
        let mut mark = self.written.clone();
        mark.cp.segment += 1;
        mark.cp.segment_len = 0;
        let shared = Arc::clone(&self.shared);
        let lock = Arc::clone(&self.lock);
        let next_mark = mark.clone();
        let res = tokio::task::spawn_blocking(move || {
            let _locked = lock;
            let mark = next_mark;
            fault::hit(Point::BeforeFsync)
                .and_then(|()| old.sync_data())
                .map_err(|e| StoreError::io("fsync segment", &old_path, &e))?;
            let next = segment::create(&seg_dir, mark.cp.segment)?;
            fault::hit(Point::MidRollover)
                .map_err(|e| StoreError::io("write checkpoint", &dir, &e))?;
            persist_with_retries(&dir, &mark.cp, &shared)?;
            Ok::<File, StoreError>(next)
        })
        .await;
        match res {
            Ok(Ok(next)) => {
                self.file = Arc::new(next);
                self.written = mark.clone();
                self.dirty_since = None;
                self.publish(mark);
            }
            Ok(Err(err)) => {
                // The seal may have failed in its fsync: never salvage after this.
                self.fsync_failed = true;
                self.fail(err);
            }
            Err(join) => {
                self.fsync_failed = true;
                self.fail(panic_message(join));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: i32) -> StoreError {
        StoreError::io(
            "write segment",
            Path::new("/x"),
            &std::io::Error::from_raw_os_error(errno),
        )
    }

    #[test]
    fn only_errors_that_can_pass_are_retried() {
        for errno in [libc::EIO, libc::ENOSPC, libc::EAGAIN, libc::EINTR] {
            assert!(retryable(&io(errno)), "errno {errno}");
        }
        for errno in [
            libc::EROFS,
            libc::ENOENT,
            libc::EACCES,
            libc::EINVAL,
            libc::EBADF,
        ] {
            assert!(!retryable(&io(errno)), "errno {errno}");
        }
        assert!(!retryable(&StoreError::Closed));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(6), Duration::from_millis(1600));
        assert_eq!(backoff(30), BACKOFF_CAP);
    }
}
