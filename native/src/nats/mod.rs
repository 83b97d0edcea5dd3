//! The NATS JetStream source, free of Python: what it stores and records, byte for byte as
//! the Python source before it, so that an output directory written by either goes on with
//! the other.
//!
//! - [`connect`]: the connection: options from the source's settings, its attempts and
//!   events as log lines.
//! - [`consumer`]: the stream and consumer lookups, checks, refusals and creation.
//! - [`events`]: the log lines queued for Python.
//! - [`record`]: the stored line of a message.
//! - [`descriptor`]: the checkpoint's source descriptor (stream, consumer, listing).
//! - [`ledger`]: the sequences stored here that a delivery may bring again, by state.
//! - [`ranges`]: lists of stream sequences as `"A-B,C"` text.
//! - [`stoprecord`]: `nats-acks.json`, what a stop saw confirmed after its last checkpoint.
//! - [`text`]: JSON string escaping as CPython's, `%g`, `repr`, creation times, reply
//!   subjects, subject patterns.

pub mod connect;
pub mod consumer;
pub mod descriptor;
pub mod events;
pub mod ledger;
pub mod ranges;
pub mod record;
pub mod stoprecord;
pub mod text;
