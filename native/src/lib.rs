//! shovel's native module, `shovel._native`: the durable store and the read path that feeds
//! it, so that records go from a file to fsynced segments without Python touching their bytes.
//!
//! # Layout
//!
//! Pure Rust, tested by `cargo test` without Python:
//!
//! - [`store`]: an output directory: its lock, recovery, ordered segment writes, grouped
//!   fsyncs, the checkpoint. Its doc states the durability protocol.
//! - [`runtime`]: a tokio runtime on a thread of its own (the store writes on one): start,
//!   stop, join.
//! - [`nats`]: the NATS JetStream source: its stored records, checkpoint descriptor and
//!   listings, in today's formats.
//! - [`sink`]: the JetStream sink: records as messages in a stream, exactly once, the stream
//!   holding the resume point.
//! - [`notify`]: the wake-up channel by which native work tells the event loop to look.
//! - [`buffers`]: read buffers that go from the reader to the writer and back, never copied.
//! - [`split`]: cutting a byte stream into batches of whole lines, long lines set apart.
//! - [`fskind`]: what a follower needs beyond `stat`: pseudo filesystems and birth times.
//!
//! The PyO3 boundary, built with the `python` feature (argument conversion and error mapping):
//!
//! - `client`: the storage client, its exceptions, counters and close report, and the
//!   checkpoint reader.
//! - `reading`: a file read in chunks, the splitter, and the batches of records it makes.
//! - `natsource`: the NATS source, its counters, stop report and exceptions.
//! - `natsink`: the JetStream sink, what its open found, its counters and its exception.
//!
//! `native_module` below is the one list of what Python sees; `shovel/_native.pyi` mirrors it.

pub mod buffers;
pub mod fskind;
pub mod nats;
pub mod notify;
pub mod runtime;
pub mod sink;
pub mod split;
pub mod store;

#[cfg(feature = "python")]
mod client;
#[cfg(feature = "python")]
mod natsink;
#[cfg(feature = "python")]
mod natsource;
#[cfg(feature = "python")]
mod reading;

#[cfg(feature = "python")]
use pyo3::prelude::*;
#[cfg(feature = "python")]
use pyo3::types::PyTuple;

/// The `shovel._native` extension module: every class, function, exception and constant it
/// exports, in one table.
#[cfg(feature = "python")]
#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The storage client and what it reports, and the checkpoint reader.
    m.add_class::<client::StorageClient>()?;
    m.add_class::<client::Stats>()?;
    m.add_class::<client::CloseReport>()?;
    m.add_class::<client::Checkpoint>()?;
    m.add_function(wrap_pyfunction!(client::read_checkpoint, m)?)?;
    // Its exceptions, each exported under its own name.
    for exception in [
        py.get_type::<client::StorageError>(),
        py.get_type::<client::StorageIOError>(),
        py.get_type::<client::DirectoryLockedError>(),
        py.get_type::<client::CorruptStoreError>(),
        py.get_type::<client::ClientClosedError>(),
        py.get_type::<client::CloseTimeoutError>(),
    ] {
        m.add(exception.name()?, exception)?;
    }
    // What Python must do as the store does: the lock's name, file modes, retries.
    m.add("FAULT_INJECTION", store::fault::ENABLED)?;
    m.add("LOCK_FILE", store::LOCK_FILE)?;
    m.add("FILE_MODE", store::perm::FILE_MODE)?;
    m.add("DIR_MODE", store::perm::DIR_MODE)?;
    m.add("RETRIES", store::writer::RETRIES)?;
    m.add_function(wrap_pyfunction!(client::retryable_errno, m)?)?;
    m.add_function(wrap_pyfunction!(client::retry_wait_s, m)?)?;
    // The read path.
    m.add_function(wrap_pyfunction!(reading::birth_time_ns, m)?)?;
    m.add_class::<reading::ReadFile>()?;
    m.add_class::<reading::Chunk>()?;
    m.add_class::<reading::Records>()?;
    m.add_class::<reading::Splitter>()?;
    // The NATS source, what it reports, and its exceptions.
    m.add_class::<natsource::NatsSource>()?;
    m.add_class::<natsource::NatsStats>()?;
    m.add_class::<natsource::FinishReport>()?;
    for exception in [
        py.get_type::<natsource::NatsError>(),
        py.get_type::<natsource::NatsRefused>(),
        py.get_type::<natsource::NatsMismatch>(),
        py.get_type::<natsource::NatsUnavailable>(),
        py.get_type::<natsource::NatsSourceError>(),
    ] {
        m.add(exception.name()?, exception)?;
    }
    // What Python says and shows as the source does: the stall warning's wait, the latency
    // histogram's bounds (must match shovel/sources/nats/metrics.py).
    m.add("NATS_STALL_WARN_S", nats::core::STALL_WARN.as_secs_f64())?;
    m.add(
        "NATS_ACK_LATENCY_BOUNDS",
        PyTuple::new(py, nats::core::ACK_LATENCY_BOUNDS)?,
    )?;
    m.add_function(wrap_pyfunction!(natsource::nats_record_line, m)?)?;
    // The JetStream sink: its client, what its open found, its counters, its exception.
    m.add_class::<natsink::NatsSink>()?;
    m.add_class::<sink::open::Opened>()?;
    m.add_class::<sink::SinkStats>()?;
    let sink_error = py.get_type::<natsink::SinkError>();
    m.add(sink_error.name()?, sink_error)?;
    m.add("SINK_HEADER_ROOM", sink::open::HEADER_ROOM)?;
    m.add("SINK_MAX_BATCH", sink::protocol::MAX_BATCH)?;
    Ok(())
}
