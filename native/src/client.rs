//! The storage side of the PyO3 boundary: `StorageClient`, its exceptions, counters and close
//! report, and `read_checkpoint`, the one reader of the checkpoint file that Python has.
//! Argument conversion and error mapping only; lib.rs registers what is here.
//!
//! Every method returns without waiting except `close` and the constructor, which do blocking
//! file work with the GIL released. No Rust thread ever calls into Python: the event loop learns
//! of progress by watching `notify_fd()` and reading the counters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::reading::Records;
use crate::store::{self, CloseError, Data, Store, StoreConfig, StoreError, Submitted};

create_exception!(
    shovel._native,
    StorageError,
    PyException,
    "Base class of every storage client error."
);
create_exception!(
    shovel._native,
    StorageIOError,
    StorageError,
    "An operating-system error while writing, syncing or checkpointing; has `errno` and `filename`."
);
create_exception!(
    shovel._native,
    DirectoryLockedError,
    StorageError,
    "Another process holds the output directory."
);
create_exception!(
    shovel._native,
    CorruptStoreError,
    StorageError,
    "The output directory is damaged in a way a crash cannot leave."
);
create_exception!(
    shovel._native,
    ClientClosedError,
    StorageError,
    "The client is closed and takes no more writes."
);
create_exception!(
    shovel._native,
    CloseTimeoutError,
    StorageError,
    "close() gave up before everything was durable; says how much is not."
);

/// Converts a store error into the matching Python exception.
fn to_py(py: Python<'_>, err: StoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        StoreError::Io { errno, path, .. } => {
            let e = StorageIOError::new_err(msg);
            let value = e.value(py);
            // Attribute setting on a fresh exception instance cannot fail in practice; if it
            // did, the message still carries the same facts.
            let _ = value.setattr("errno", errno);
            let _ = value.setattr("filename", path);
            e
        }
        StoreError::Locked { .. } => DirectoryLockedError::new_err(msg),
        StoreError::Corrupt { .. } => CorruptStoreError::new_err(msg),
        StoreError::Closed => ClientClosedError::new_err(msg),
        StoreError::Config(_) | StoreError::Invalid(_) => PyValueError::new_err(msg),
        StoreError::Panic(_) => StorageError::new_err(msg),
    }
}

fn close_to_py(py: Python<'_>, err: CloseError) -> PyErr {
    match err {
        CloseError::Failed(e) => to_py(py, e),
        timed_out @ CloseError::TimedOut {
            writes,
            records,
            bytes,
            committed_offset,
        } => {
            let e = CloseTimeoutError::new_err(timed_out.to_string());
            let value = e.value(py);
            let _ = value.setattr("writes_not_durable", writes);
            let _ = value.setattr("records_not_durable", records);
            let _ = value.setattr("bytes_not_durable", bytes);
            let _ = value.setattr("committed_offset", committed_offset);
            e
        }
    }
}

/// A point-in-time copy of the client's counters.
#[pyclass(frozen, get_all, skip_from_py_object, module = "shovel._native")]
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Writes accepted and not yet durable.
    pub inflight_writes: u64,
    /// Bytes of those writes.
    pub inflight_bytes: u64,
    /// Records of those writes.
    pub inflight_records: u64,
    /// Records made durable since open.
    pub records_durable: u64,
    /// Bytes made durable since open.
    pub bytes_durable: u64,
    /// fsync groups completed (each followed by a checkpoint).
    pub fsyncs: u64,
    /// Source offset of the last persisted checkpoint.
    pub committed_offset: u64,
    /// Errors met by the writer.
    pub errors: u64,
    /// Sequence number of the last durable write.
    pub durable_seq: u64,
    /// Bytes in all segments per the last checkpoint, across runs.
    pub stored_bytes_total: u64,
    /// Failed writes or checkpoints that were retried.
    pub retries: u64,
}

/// What a successful `close()` reports.
#[pyclass(frozen, get_all, skip_from_py_object, module = "shovel._native")]
#[derive(Debug, Clone, Copy)]
pub struct CloseReport {
    /// The committed source offset on disk.
    pub committed_offset: u64,
    /// Records in all segments, across runs.
    pub records_total: u64,
    /// Bytes in all segments, across runs.
    pub bytes_total: u64,
    /// Records made durable since open.
    pub records_durable: u64,
    /// Bytes made durable since open.
    pub bytes_durable: u64,
}

/// What an output directory's checkpoint says is durable, as `read_checkpoint` found it.
#[pyclass(frozen, skip_from_py_object, module = "shovel._native")]
#[derive(Debug, Clone)]
pub struct Checkpoint(store::Checkpoint);

#[pymethods]
impl Checkpoint {
    /// Source offset up to which every record is durable.
    #[getter]
    fn committed_offset(&self) -> u64 {
        self.0.committed_offset
    }

    /// Records in all segments, across runs.
    #[getter]
    fn records(&self) -> u64 {
        self.0.records
    }

    /// Bytes in all segments, across runs.
    #[getter]
    fn bytes(&self) -> u64 {
        self.0.bytes
    }

    /// Index of the segment being appended to.
    #[getter]
    fn segment(&self) -> u64 {
        self.0.segment
    }

    /// Durable length of that segment; recovery cuts anything past it.
    #[getter]
    fn segment_len(&self) -> u64 {
        self.0.segment_len
    }

    /// The source descriptor the committed offset belongs to ("" when there is none).
    #[getter]
    fn source(&self) -> &str {
        &self.0.source
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let cp = &self.0;
        let source = PyString::new(py, &cp.source).repr()?;
        Ok(format!(
            "Checkpoint(committed_offset={}, records={}, bytes={}, segment={}, segment_len={}, \
             source={source})",
            cp.committed_offset, cp.records, cp.bytes, cp.segment, cp.segment_len
        ))
    }
}

/// The checkpoint of the output directory `directory`, or `None` when it has none yet (or
/// the directory does not exist). Reads the file with the GIL released. Raises
/// CorruptStoreError when the checkpoint is damaged, StorageIOError when it cannot be read.
#[pyfunction]
pub(crate) fn read_checkpoint(py: Python<'_>, directory: PathBuf) -> PyResult<Option<Checkpoint>> {
    match py.detach(move || store::load_checkpoint(&directory)) {
        Ok(found) => Ok(found.map(Checkpoint)),
        Err(e) => Err(to_py(py, e)),
    }
}

/// The storage client: owns an output directory, its lock, and a writer on a runtime thread.
#[pyclass(frozen, weakref, module = "shovel._native")]
pub struct StorageClient {
    /// The store; shared so that a blocking `close` can run with the GIL released.
    store: Arc<Store>,
}

#[pymethods]
impl StorageClient {
    /// Locks and recovers `directory`, then starts the writer.
    #[new]
    #[pyo3(signature = (directory, *, segment_max_bytes, fsync_interval_ms, fsync_max_bytes, max_inflight_bytes))]
    fn new(
        py: Python<'_>,
        directory: PathBuf,
        segment_max_bytes: u64,
        fsync_interval_ms: u64,
        fsync_max_bytes: u64,
        max_inflight_bytes: u64,
    ) -> PyResult<Self> {
        let config = StoreConfig {
            dir: directory,
            segment_max_bytes,
            fsync_interval: Duration::from_millis(fsync_interval_ms),
            fsync_max_bytes,
            max_inflight_bytes,
        };
        let store = py
            .detach(move || Store::open(config))
            .map_err(|e| to_py(py, e))?;
        Ok(StorageClient {
            store: Arc::new(store),
        })
    }

    /// Hands a batch to the writer; returns its sequence number, or `None` when full.
    /// `source`, when given, becomes the source descriptor kept in the checkpoint.
    /// `data` is bytes (copied) or `Records` (their buffers taken over, no copy, once the
    /// write is accepted).
    #[pyo3(signature = (data, records, end_offset, source=None))]
    fn submit(
        &self,
        data: &Bound<'_, PyAny>,
        records: u64,
        end_offset: u64,
        source: Option<&str>,
    ) -> PyResult<Option<u64>> {
        let py = data.py();
        let outcome = if let Ok(owned) = data.cast::<Records>() {
            owned.get().hand_over(|parts| match parts {
                Some(parts) => {
                    let outcome =
                        self.store
                            .submit_data(Data::Owned(parts), records, end_offset, source);
                    let taken = matches!(outcome, Ok(Submitted::Accepted(_)));
                    (outcome, taken)
                }
                None => (
                    Err(StoreError::Invalid(
                        "these records were already handed to storage".into(),
                    )),
                    false,
                ),
            })
        } else {
            let bytes = data.extract::<&[u8]>()?;
            self.store.submit(bytes, records, end_offset, source)
        };
        match outcome {
            Ok(Submitted::Accepted(seq)) => Ok(Some(seq)),
            Ok(Submitted::Full) => Ok(None),
            Err(e) => Err(to_py(py, e)),
        }
    }

    /// Sequence number of the last durable write.
    #[getter]
    fn durable_seq(&self) -> u64 {
        self.store.stats().durable_seq
    }

    /// The counters, now.
    fn stats(&self) -> Stats {
        let s = self.store.stats();
        Stats {
            inflight_writes: s.inflight_writes,
            inflight_bytes: s.inflight_bytes,
            inflight_records: s.inflight_records,
            records_durable: s.records_durable,
            bytes_durable: s.bytes_durable,
            fsyncs: s.fsyncs,
            committed_offset: s.committed_offset,
            errors: s.errors,
            durable_seq: s.durable_seq,
            stored_bytes_total: s.stored_bytes_total,
            retries: s.retries,
        }
    }

    /// Raises the first storage error, if one happened.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        match self.store.error() {
            Some(e) => Err(to_py(py, e)),
            None => Ok(()),
        }
    }

    /// File descriptor that becomes readable after durable progress or an error.
    fn notify_fd(&self) -> i32 {
        self.store.notify_fd()
    }

    /// Takes the messages queued for the service's log (retried errors), oldest first.
    fn take_events(&self) -> Vec<String> {
        self.store.take_events()
    }

    /// Consumes pending wake-ups; returns how many there were.
    fn drain_notifications(&self) -> usize {
        self.store.drain_notifications()
    }

    /// Committed source offset found at open (where the source resumes).
    #[getter]
    fn initial_committed_offset(&self) -> u64 {
        self.store.initial_checkpoint().committed_offset
    }

    /// The source descriptor of the checkpoint found at open ("" if none).
    #[getter]
    fn initial_source(&self) -> String {
        self.store.initial_checkpoint().source.to_string()
    }

    /// Records stored in the directory when it was opened.
    #[getter]
    fn initial_records(&self) -> u64 {
        self.store.initial_checkpoint().records
    }

    /// Bytes stored in the directory when it was opened.
    #[getter]
    fn initial_bytes(&self) -> u64 {
        self.store.initial_checkpoint().bytes
    }

    /// What recovery repaired at open, one sentence each.
    #[getter]
    fn recovery_notes(&self) -> Vec<String> {
        self.store.recovery_notes().to_vec()
    }

    /// Whether close has begun.
    #[getter]
    fn closed(&self) -> bool {
        self.store.is_closed()
    }

    /// The output directory.
    #[getter]
    fn directory(&self) -> PathBuf {
        self.store.config().dir.clone()
    }

    /// Refuses new writes, waits up to `timeout_s` for every accepted write to be durable and
    /// checkpointed, then stops the runtime thread. Idempotent. Blocks with the GIL released.
    fn close(&self, py: Python<'_>, timeout_s: f64) -> PyResult<CloseReport> {
        let timeout = Duration::try_from_secs_f64(timeout_s).map_err(|_| {
            PyValueError::new_err(format!(
                "timeout_s must be a finite number of seconds >= 0, got {timeout_s}"
            ))
        })?;
        let store = Arc::clone(&self.store);
        match py.detach(move || store.close(timeout)) {
            Ok(r) => Ok(CloseReport {
                committed_offset: r.checkpoint.committed_offset,
                records_total: r.checkpoint.records,
                bytes_total: r.checkpoint.bytes,
                records_durable: r.records_durable,
                bytes_durable: r.bytes_durable,
            }),
            Err(e) => Err(close_to_py(py, e)),
        }
    }
}

/// Whether a failed file operation with this errno is retried, as the store retries its own.
#[pyfunction]
pub(crate) fn retryable_errno(errno: i32) -> bool {
    crate::store::writer::retryable_errno(errno)
}

/// Seconds to wait before retry number `attempt` (from 1), as the store waits.
#[pyfunction]
pub(crate) fn retry_wait_s(attempt: u32) -> f64 {
    crate::store::writer::backoff(attempt).as_secs_f64()
}
