//! The JetStream sink's side of the PyO3 boundary: `NatsSink` (a wrapper of
//! [`sink::Sink`](crate::sink::Sink)) and its exception. What its open found (`SinkOpened`)
//! and its counters (`SinkStats`) are the sink's own types, made Python classes by the
//! `python` feature. Argument conversion and error mapping only; lib.rs registers what is
//! here.
//!
//! As with the store: no awaitable crosses the boundary, no Rust thread calls into Python.
//! The event loop watches `notify_fd()` and then calls the non-blocking methods; `close`
//! blocks with the GIL released (Python runs it through `asyncio.to_thread`).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::client::{CloseTimeoutError, StorageError};
use crate::natsource::{duration, nats_config};
use crate::reading::Records;
use crate::sink::open::Opened;
use crate::sink::records::OffsetUnit;
use crate::sink::{protocol, Closed, Sink, SinkSettings, SinkStats};

create_exception!(
    shovel._native,
    SinkError,
    StorageError,
    "The JetStream sink cannot go on (a stream that does not exist, a subject it does not \
     take, a denied publish, another writer on the subject, no server within the connect \
     timeout): exit 1, with the reason."
);

/// A JetStream stream as storage. Create it, wait for `opened()`, hand batches over with
/// `submit`, end with `close`.
#[pyclass(module = "shovel._native")]
pub struct NatsSink {
    sink: Arc<Sink>,
    unit: OffsetUnit,
}

#[pymethods]
impl NatsSink {
    /// Starts connecting to `servers` and looking up `stream` in the background.
    #[new]
    #[pyo3(signature = (
        servers, stream, subject, *, creds=None, tls_ca=None, tls_cert=None, tls_key=None,
        connect_timeout_s=None, batch=1000, max_inflight_bytes=64 * 1024 * 1024,
        offset_unit="bytes", writer_id
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        servers: Vec<String>,
        stream: String,
        subject: String,
        creds: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        connect_timeout_s: Option<f64>,
        batch: usize,
        max_inflight_bytes: usize,
        offset_unit: &str,
        writer_id: String,
    ) -> PyResult<NatsSink> {
        if !(1..=protocol::MAX_BATCH).contains(&batch) {
            return Err(PyValueError::new_err(format!(
                "batch must be from 1 to {}, got {batch}",
                protocol::MAX_BATCH
            )));
        }
        let unit = OffsetUnit::parse(offset_unit).map_err(PyValueError::new_err)?;
        let settings = SinkSettings {
            config: nats_config(servers, creds, tls_ca, tls_cert, tls_key, connect_timeout_s)?,
            stream,
            subject,
            batch,
            max_inflight_bytes: max_inflight_bytes.max(1),
            unit,
        };
        let sink = Sink::start(settings, writer_id)
            .map_err(|e| SinkError::new_err(format!("cannot start the sink's runtime: {e}")))?;
        Ok(NatsSink {
            sink: Arc::new(sink),
            unit,
        })
    }

    /// The descriptor that turns readable when there is news (the open's outcome, a stored
    /// batch, a log line, an error).
    fn notify_fd(&self) -> i32 {
        self.sink.notify_fd()
    }

    /// Clears the descriptor's readiness.
    fn drain_notifications(&self) {
        self.sink.drain_notifications();
    }

    /// The log lines said since the last call, as `(levelno, text)`.
    fn take_events(&self) -> Vec<(u8, String)> {
        self.sink
            .take_events()
            .into_iter()
            .map(|(level, text)| (level.levelno(), text))
            .collect()
    }

    /// What the open found, once done (`None` before); raises SinkError if it failed.
    fn opened(&self) -> PyResult<Option<Opened>> {
        match self.sink.opened() {
            None => Ok(None),
            Some(Ok(opened)) => Ok(Some(opened)),
            Some(Err(e)) => Err(SinkError::new_err(e.message().to_string())),
        }
    }

    /// Hands a batch over: `data` (bytes, or `Records`, taken without a copy) holding
    /// `records` whole lines that end at `end_offset`, with the descriptor that takes effect
    /// (`None`: unchanged). Returns its sequence number, or `None` when the sink is full.
    /// Raises SinkError once the sink has failed or closed.
    fn submit(
        &self,
        data: &Bound<'_, PyAny>,
        records: u64,
        end_offset: u64,
        source: Option<&str>,
    ) -> PyResult<Option<u64>> {
        let records_obj = data.cast::<Records>().ok();
        let len = match &records_obj {
            Some(owned) => owned.get().byte_len(),
            None => data.extract::<&[u8]>()?.len(),
        };
        // Only Python hands batches over, and only the writer frees room: room seen here is
        // still there below, so records are never taken over and then refused.
        let count = usize::try_from(records).unwrap_or(usize::MAX);
        if !self.sink.has_room(count, len).map_err(SinkError::new_err)? {
            return Ok(None);
        }
        let parts: Vec<Bytes> = match records_obj {
            Some(owned) => owned
                .get()
                .hand_over(|parts| match parts {
                    Some(parts) => (
                        Some(
                            std::mem::take(parts)
                                .into_iter()
                                .map(|p| p.into_bytes())
                                .collect(),
                        ),
                        true,
                    ),
                    None => (None, false),
                })
                .ok_or_else(|| {
                    PyValueError::new_err("these records were already handed to storage")
                })?,
            None => vec![Bytes::copy_from_slice(data.extract::<&[u8]>()?)],
        };
        self.sink
            .submit(parts, records, end_offset, source, self.unit)
            .map(Some)
            .map_err(SinkError::new_err)
    }

    /// The counters now.
    fn stats(&self) -> SinkStats {
        self.sink.stats()
    }

    /// The sequence number of the last handed batch every record of which is stored.
    #[getter]
    fn durable_seq(&self) -> u64 {
        self.sink.stats().durable_seq
    }

    /// Raises SinkError if a permanent error has ended the writes.
    fn check(&self) -> PyResult<()> {
        match self.sink.failure() {
            Some(why) => Err(SinkError::new_err(why)),
            None => Ok(()),
        }
    }

    /// Stops taking batches, waits up to `timeout_s` for the stream to acknowledge every
    /// accepted record, then closes the connection and stops the runtime. Returns the offset
    /// the stream holds everything up to. Raises CloseTimeoutError (with
    /// `records_not_durable`) past the deadline, SinkError after a permanent error.
    /// Idempotent. Blocks with the GIL released.
    fn close(&self, py: Python<'_>, timeout_s: f64) -> PyResult<u64> {
        let timeout = duration("timeout_s", timeout_s)?;
        let sink = Arc::clone(&self.sink);
        match py.detach(move || sink.close(timeout)) {
            Closed::Done(offset) => Ok(offset),
            Closed::Failed(why) => Err(SinkError::new_err(why)),
            Closed::TimedOut(records) => {
                let e = CloseTimeoutError::new_err(format!(
                    "{records} records were not acknowledged by the stream within {timeout_s}s"
                ));
                let _ = e.value(py).setattr("records_not_durable", records);
                Err(e)
            }
        }
    }
}
