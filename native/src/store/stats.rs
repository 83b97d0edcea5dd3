//! Counters shared by the writer and its callers, readable at any time without waiting.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters. Writers update them with atomics; readers take a [`StatsSnapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Writes accepted by `submit` and not yet durable.
    pub inflight_writes: AtomicU64,
    /// Bytes of those writes.
    pub inflight_bytes: AtomicU64,
    /// Records in those writes.
    pub inflight_records: AtomicU64,
    /// Records made durable since the client was opened.
    pub records_durable: AtomicU64,
    /// Bytes made durable since the client was opened.
    pub bytes_durable: AtomicU64,
    /// Completed fsync groups (each ends with a checkpoint).
    pub fsyncs: AtomicU64,
    /// Source offset of the last persisted checkpoint.
    pub committed_offset: AtomicU64,
    /// Errors met by the writer (the first one is kept and reported).
    pub errors: AtomicU64,
    /// Sequence number of the last durable write (writes are numbered from 1).
    pub durable_seq: AtomicU64,
    /// Total bytes in all segments according to the last checkpoint, across runs.
    pub stored_bytes_total: AtomicU64,
    /// Failed writes or checkpoints that were retried.
    pub retries: AtomicU64,
}

/// A point-in-time copy of [`Stats`]. Fields are read one by one, so two of them may straddle
/// an update; each is exact on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::inflight_writes`].
    pub inflight_writes: u64,
    /// See [`Stats::inflight_bytes`].
    pub inflight_bytes: u64,
    /// See [`Stats::inflight_records`].
    pub inflight_records: u64,
    /// See [`Stats::records_durable`].
    pub records_durable: u64,
    /// See [`Stats::bytes_durable`].
    pub bytes_durable: u64,
    /// See [`Stats::fsyncs`].
    pub fsyncs: u64,
    /// See [`Stats::committed_offset`].
    pub committed_offset: u64,
    /// See [`Stats::errors`].
    pub errors: u64,
    /// See [`Stats::durable_seq`].
    pub durable_seq: u64,
    /// See [`Stats::stored_bytes_total`].
    pub stored_bytes_total: u64,
    /// See [`Stats::retries`].
    pub retries: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        StatsSnapshot {
            inflight_writes: get(&self.inflight_writes),
            inflight_bytes: get(&self.inflight_bytes),
            inflight_records: get(&self.inflight_records),
            records_durable: get(&self.records_durable),
            bytes_durable: get(&self.bytes_durable),
            fsyncs: get(&self.fsyncs),
            committed_offset: get(&self.committed_offset),
            errors: get(&self.errors),
            durable_seq: get(&self.durable_seq),
            stored_bytes_total: get(&self.stored_bytes_total),
            retries: get(&self.retries),
        }
    }
}
