//! The NATS source's side of the PyO3 boundary: `NatsSource` (a wrapper of
//! [`nats::source::Source`](crate::nats::source::Source)), its counters (`NatsStats`), its
//! stop report (`FinishReport`), its exceptions, and `nats_record_line`, a test hook. Argument
//! conversion and error mapping only; lib.rs registers what is here.
//!
//! As with the storage client, no awaitable crosses the boundary and no Rust thread calls into
//! Python: the source's tasks run on a runtime thread of its own, and the event loop learns of
//! progress (a batch, a log line, the open's outcome) by watching `notify_fd()`, then calls the
//! non-blocking methods. `restore` (a file read) and `finish` and `close` (the stop protocol,
//! the runtime's end) block, with the GIL released; Python runs them through
//! `asyncio.to_thread`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::Part;
use crate::nats::connect::{split_servers, without_secret, NatsConfig, OpenError};
use crate::nats::consumer::ConsumerSpec;
use crate::nats::core::Batch;
use crate::nats::finish;
use crate::nats::record::Record;
use crate::nats::source::{CheckpointNats, Source, SourceSettings};
use crate::reading::Records;

create_exception!(
    shovel._native,
    NatsError,
    PyException,
    "Base class of the NATS source's errors."
);
create_exception!(
    shovel._native,
    NatsRefused,
    NatsError,
    "The NATS source is unusable as configured (a missing stream, a consumer that could lose \
     messages, a credentials file that cannot be read): a usage error, exit 2."
);
create_exception!(
    shovel._native,
    NatsMismatch,
    NatsError,
    "The stream or consumer is not the one the output directory was written from, or the \
     checkpoint's listing cannot be read: exit 1."
);
create_exception!(
    shovel._native,
    NatsUnavailable,
    NatsError,
    "No NATS server accepted the connection within the connect timeout: exit 1."
);
create_exception!(
    shovel._native,
    NatsSourceError,
    NatsError,
    "Reading cannot go on (the consumer was deleted on the server): exit 1."
);

/// The Python exception of an open that failed, with the same message.
fn open_error(err: OpenError) -> PyErr {
    match err {
        OpenError::Refused(m) => NatsRefused::new_err(m),
        OpenError::Mismatch(m) => NatsMismatch::new_err(m),
        OpenError::Unavailable(m) => NatsUnavailable::new_err(m),
    }
}

/// The connection settings the source and the sink take alike: the servers (their form
/// checked), credentials, TLS files (a certificate with its key) and the connect timeout.
pub(crate) fn nats_config(
    servers: Vec<String>,
    creds: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    connect_timeout_s: Option<f64>,
) -> PyResult<NatsConfig> {
    // The URLs' form is checked here, before any connection: the same check as at open.
    split_servers(&servers).map_err(PyValueError::new_err)?;
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(PyValueError::new_err(
            "tls_cert and tls_key go together: a client certificate needs its key",
        ));
    }
    let connect_timeout = connect_timeout_s
        .map(|s| duration("connect_timeout_s", s))
        .transpose()?;
    Ok(NatsConfig {
        servers,
        creds,
        tls_ca,
        tls_cert,
        tls_key,
        connect_timeout,
    })
}

/// `seconds` as a duration; ValueError naming `what` when it is negative or not finite.
pub(crate) fn duration(what: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, got {seconds}"
        ))
    })
}

/// A batch as Python takes it: `(Records, records, end_offset, descriptor)`.
type PyBatch = (Records, usize, u64, String);

fn py_batch(batch: Batch) -> PyBatch {
    (
        Records::new(vec![Part::whole(batch.data)]),
        batch.records,
        batch.end_offset,
        batch.descriptor,
    )
}

/// A point-in-time copy of the NATS source's counters (the `shovel_nats_*` metrics).
#[pyclass(frozen, get_all, skip_from_py_object, module = "shovel._native")]
#[derive(Debug, Clone)]
pub struct NatsStats {
    /// Messages delivered (redeliveries included).
    pub fetched: u64,
    /// Deliveries the server holds acknowledged (confirmed, or passed by its floor).
    pub acked: u64,
    /// Deliveries that were not the first of their message.
    pub redelivered: u64,
    /// Deliveries of messages already stored here: not stored again.
    pub skipped: u64,
    /// Messages given back at a stop (negative acknowledgements sent).
    pub nacked: u64,
    /// The consumer's messages not yet delivered, at the last look.
    pub consumer_pending: u64,
    /// The consumer's messages delivered and not acknowledged, at the last look.
    pub consumer_ack_pending: u64,
    /// How long the reader has waited for room, in seconds (0 when it does not wait).
    pub stalled_s: f64,
    /// Waits for room long enough to be said.
    pub stalls: u64,
    /// The acknowledgement latency histogram's cumulative counts, one per bound of
    /// `NATS_ACK_LATENCY_BOUNDS`, then +Inf.
    pub ack_latency_buckets: Vec<u64>,
    /// The sum of the latencies counted, in seconds.
    pub ack_latency_sum: f64,
    /// How many latencies are counted.
    pub ack_latency_count: u64,
}

/// What a stop did, for its log lines (see [`finish::FinishReport`]).
#[pyclass(frozen, skip_from_py_object, module = "shovel._native")]
#[derive(Debug, Clone)]
pub struct FinishReport(finish::FinishReport);

#[pymethods]
impl FinishReport {
    /// A server was connected when the stop began.
    #[getter]
    fn connected(&self) -> bool {
        self.0.connected
    }

    /// Deliveries acknowledged over the run.
    #[getter]
    fn acked(&self) -> u64 {
        self.0.acked
    }

    /// Stored messages not confirmed acknowledged.
    #[getter]
    fn not_confirmed(&self) -> usize {
        self.0.not_confirmed
    }

    /// Messages given back.
    #[getter]
    fn given_back(&self) -> u64 {
        self.0.given_back
    }

    /// Messages due to be given back.
    #[getter]
    fn due_back(&self) -> usize {
        self.0.due_back
    }

    /// The stop's duration in seconds.
    #[getter]
    fn took_s(&self) -> f64 {
        self.0.took.as_secs_f64()
    }

    /// Why the stop record was not written.
    #[getter]
    fn stop_record_error(&self) -> Option<&str> {
        self.0.stop_record_error.as_deref()
    }
}

/// The NATS JetStream source: a durable pull consumer whose messages are acknowledged once
/// stored durably, on a runtime thread of its own.
#[pyclass(frozen, weakref, module = "shovel._native")]
pub struct NatsSource {
    /// The source; its methods take `&self`, so a blocking one can run with the GIL released.
    source: Source,
}

#[pymethods]
impl NatsSource {
    /// A source, not connected: no thread, no I/O.
    #[new]
    #[pyo3(signature = (
        *,
        servers,
        stream,
        consumer,
        subject,
        batch,
        ack_wait_s,
        max_ack_pending,
        max_unacked,
        shutdown_timeout_s,
        output_dir,
        creds = None,
        tls_ca = None,
        tls_cert = None,
        tls_key = None,
        connect_timeout_s = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        servers: Vec<String>,
        stream: String,
        consumer: String,
        subject: Option<String>,
        batch: usize,
        ack_wait_s: f64,
        max_ack_pending: i64,
        max_unacked: usize,
        shutdown_timeout_s: f64,
        output_dir: Option<PathBuf>,
        creds: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        connect_timeout_s: Option<f64>,
    ) -> PyResult<Self> {
        // The messages name the first server, without its user information.
        let server = servers
            .first()
            .map(|s| without_secret(s))
            .unwrap_or_default();
        if batch == 0 || max_unacked < batch {
            return Err(PyValueError::new_err(format!(
                "batch must be at least 1 and max_unacked at least batch, got batch {batch}, \
                 max_unacked {max_unacked}"
            )));
        }
        let config = nats_config(servers, creds, tls_ca, tls_cert, tls_key, connect_timeout_s)?;
        let settings = SourceSettings {
            spec: ConsumerSpec {
                stream,
                consumer,
                subject,
                ack_wait: duration("ack_wait_s", ack_wait_s)?,
                max_ack_pending,
                shutdown_timeout: duration("shutdown_timeout_s", shutdown_timeout_s)?,
                server,
                batch,
            },
            config,
            batch,
            max_unacked,
            output_dir,
        };
        Ok(NatsSource {
            source: Source::new(settings)?,
        })
    }

    /// Restores the ledger from the checkpoint, as the Python source's `resume()` did.
    /// Blocking (reads the stop record), with the GIL released.
    #[pyo3(signature = (committed_offset, *, stored = None, acked = "", created = "", consumer_created = ""))]
    fn restore(
        &self,
        py: Python<'_>,
        committed_offset: u64,
        stored: Option<&str>,
        acked: &str,
        created: &str,
        consumer_created: &str,
    ) -> PyResult<(usize, bool, Option<String>)> {
        let checkpoint = match stored {
            Some(stored) => Some(CheckpointNats {
                stored: stored.to_owned(),
                acked: acked.to_owned(),
                created: created.to_owned(),
                consumer_created: consumer_created.to_owned(),
            }),
            None if acked.is_empty() && created.is_empty() && consumer_created.is_empty() => None,
            None => {
                return Err(PyValueError::new_err(
                    "acked, created and consumer_created come from a checkpoint of this \
                     source: pass its stored too",
                ))
            }
        };
        let source = &self.source;
        let found = py
            .detach(|| source.restore(committed_offset, checkpoint.as_ref()))
            .map_err(NatsMismatch::new_err)?;
        Ok((found.restored, found.from_stop, found.warning))
    }

    /// Starts the runtime thread and the open task; `notify_fd()` becomes readable when it
    /// ends.
    fn start_open(&self) -> PyResult<()> {
        Ok(self.source.start_open()?)
    }

    /// `None` while opening; then the start line's phrase, or the open's error raised.
    fn open_result(&self) -> PyResult<Option<String>> {
        self.source.open_result().transpose().map_err(open_error)
    }

    /// Starts reading after a successful open, after stream sequence `start_offset`.
    fn start_reading(&self, start_offset: u64) -> PyResult<()> {
        self.source
            .start_reading(start_offset)
            .map_err(PyRuntimeError::new_err)
    }

    /// The next batch, if one is ready: `(records, count, end_offset, descriptor)`.
    fn take_batch(&self) -> PyResult<Option<PyBatch>> {
        let batch = self.source.take_batch().map_err(NatsSourceError::new_err)?;
        Ok(batch.map(py_batch))
    }

    /// At a stop, before storage is closed: everything held, in batches.
    fn take_tail(&self) -> Vec<PyBatch> {
        self.source.take_tail().into_iter().map(py_batch).collect()
    }

    /// Storage made `records_durable` records of this run durable.
    fn made_durable(&self, records_durable: u64) {
        self.source.made_durable(records_durable);
    }

    /// The stop protocol within `timeout_s`, then the runtime thread stops. Blocking, with
    /// the GIL released. `None` when the source never opened or already finished.
    fn finish(
        &self,
        py: Python<'_>,
        records_durable: u64,
        timeout_s: f64,
    ) -> PyResult<Option<FinishReport>> {
        let time = duration("timeout_s", timeout_s)?;
        let source = &self.source;
        let report = py.detach(|| source.finish(records_durable, time));
        Ok(report.map(FinishReport))
    }

    /// A run that never started reading: the open stops, the connection closes (within
    /// `timeout_s`), the runtime thread stops. Blocking, with the GIL released; idempotent.
    fn close(&self, py: Python<'_>, timeout_s: f64) -> PyResult<()> {
        let wait = duration("timeout_s", timeout_s)?;
        let source = &self.source;
        py.detach(|| source.close(wait));
        Ok(())
    }

    /// File descriptor that becomes readable when there is news.
    fn notify_fd(&self) -> i32 {
        self.source.notify_fd()
    }

    /// Consumes pending wake-ups; returns how many there were.
    fn drain_notifications(&self) -> usize {
        self.source.drain_notifications()
    }

    /// Takes the log lines said since the last call, oldest first: `(levelno, text)`.
    fn take_events(&self) -> Vec<(u8, String)> {
        self.source
            .take_events()
            .into_iter()
            .map(|(level, text)| (level.levelno(), text))
            .collect()
    }

    /// The counters, now.
    fn stats(&self) -> NatsStats {
        let s = self.source.stats();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NatsStats {
            fetched: load(&s.fetched),
            acked: load(&s.acked),
            redelivered: load(&s.redelivered),
            skipped: load(&s.skipped),
            nacked: load(&s.nacked),
            consumer_pending: load(&s.consumer_pending),
            consumer_ack_pending: load(&s.consumer_ack_pending),
            stalled_s: self.source.stalled().as_secs_f64(),
            stalls: load(&s.stalls),
            ack_latency_buckets: s.ack_latency_buckets().to_vec(),
            ack_latency_sum: Duration::from_nanos(load(&s.ack_latency_ns)).as_secs_f64(),
            ack_latency_count: load(&s.ack_latency_count),
        }
    }
}

/// The stored line of a message, newline included (for tests: the service never needs it).
#[pyfunction]
#[pyo3(signature = (seq, subject, msg_id, data))]
pub(crate) fn nats_record_line<'py>(
    py: Python<'py>,
    seq: u64,
    subject: &str,
    msg_id: Option<&str>,
    data: &[u8],
) -> Bound<'py, PyBytes> {
    let record = Record {
        seq,
        subject,
        id: msg_id,
        data,
    };
    PyBytes::new(py, &record.to_line())
}
