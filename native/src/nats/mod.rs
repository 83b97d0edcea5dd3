//! The NATS JetStream source, free of Python: what it stores and records, byte for byte as
//! the Python source before it, so that an output directory written by either goes on with
//! the other.
//!
//! - [`source`]: the source as one object (what the Python class wraps): open, read, stop.
//! - [`core`]: the state the tasks and the Python side share, and the cutting of batches.
//! - [`reader`]: the pull requests and their deliveries.
//! - [`acker`]: acknowledgements after durability, their confirmations, the consumer's floor.
//! - [`finish`]: the stop protocol.
//! - [`connect`]: the connection: options from the source's settings, its attempts and
//!   events as log lines.
//! - [`consumer`]: the stream and consumer lookups, checks, refusals and creation.
//! - [`events`]: the log lines queued for Python.
//! - [`record`]: the stored line of a message.
//! - [`descriptor`]: the checkpoint's source descriptor (stream, consumer, listing).
//! - [`ledger`]: the sequences stored here that a delivery may bring again, by state.
//! - [`ranges`]: lists of stream sequences as `"A-B,C"` text.
//! - [`seqset`]: the sequences stored here that left the ledger, as runs.
//! - [`stoprecord`]: `nats-acks.json`, what a stop saw confirmed after its last checkpoint.
//! - [`text`]: JSON string escaping as CPython's, `%g`, `repr`, creation times, reply
//!   subjects, subject patterns.

pub mod acker;
pub mod connect;
pub mod consumer;
pub mod core;
pub mod descriptor;
pub mod events;
pub mod finish;
pub mod ledger;
pub mod ranges;
pub mod reader;
pub mod record;
pub mod seqset;
pub mod source;
pub mod stoprecord;
pub mod text;
