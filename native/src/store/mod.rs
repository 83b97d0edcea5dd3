//! The durable store, free of Python: recovery, segment writes, grouped fsyncs, checkpoints.
//!
//! # The durability protocol
//!
//! A write is durable once all seven steps below have run for it, in this order. The writer
//! task ([`writer::Writer`]) owns them. Step 1 runs once per batch; steps 2 to 6 run once per
//! group of batches, on one blocking thread (`Writer::start_sync`).
//!
//! 1. Append the batch to the current segment: `writer::append`. If the append fails, it cuts
//!    the segment back to where the batch began.
//! 2. fsync the segment (`File::sync_data` in `Writer::start_sync`). It covers every byte
//!    appended before it began: that is the watermark the checkpoint records.
//! 3. Write `checkpoint.tmp` with the new [`Checkpoint`]: `checkpoint::persist`.
//! 4. fsync `checkpoint.tmp` (same function).
//! 5. Rename `checkpoint.tmp` over `checkpoint` (same function).
//! 6. fsync the output directory: `checkpoint::sync_dir`, called by `checkpoint::persist`.
//! 7. Publish the committed offset: `Writer::start_sync` stores it in the counters, then
//!    `Writer::publish` moves `durable_seq` and wakes the event loop. Python acknowledges a
//!    write only when `durable_seq` reaches it.
//!
//! Each step waits for the one before it because of what a crash between them leaves. At the
//! next open, `recovery::recover` brings the directory back to what `checkpoint` says. The
//! fault points of [`fault::Point`] stop the process in these gaps, for the crash tests.
//!
//! - After 1 or 2, before 3 ([`fault::Point::BeforeFsync`], [`fault::Point::AfterFsync`]): the
//!   segment may hold bytes past the checkpoint's `segment_len`. Recovery cuts them off, and
//!   the source reads them again from the committed offset. The fsync comes first so that a
//!   checkpoint never covers bytes a power loss could take away: a segment shorter than its
//!   checkpoint is damage recovery refuses to guess about.
//! - After 3 or 4, before 5 ([`fault::Point::MidCheckpoint`]): `checkpoint.tmp` is left over
//!   and the old checkpoint is intact. Recovery deletes the temp file and cuts the segment back
//!   to the old checkpoint. The temp file is fsynced before the rename so that the name never
//!   points at contents that did not reach the disk: an empty or torn checkpoint is refused.
//! - After 5, before 6: after a power loss the directory holds the old checkpoint or the new
//!   one. Both match bytes already fsynced, so recovery accepts either.
//! - After 6, before 7 ([`fault::Point::AfterCheckpoint`]): the new checkpoint is durable but
//!   Python was not told. A restart resumes at its committed offset, so the writes are kept
//!   once; only their acknowledgement is lost. Publishing before 6 could acknowledge an offset
//!   that a power loss then takes back.
//!
//! A failed checkpoint write is retried (`writer::persist_with_retries`): the old checkpoint
//! stays valid until the rename. A failed fsync is never retried, since the kernel may have
//! dropped the pages it failed to write.
//!
//! A rollover (`Writer::rollover`) adds one step between 2 and 3: the fsync of step 2 seals the
//! old segment, then `segment::create` makes the next one and fsyncs the segments directory.
//! The checkpoint that names the new segment is the switch. A crash before its rename
//! ([`fault::Point::MidRollover`]) leaves an empty later segment, which recovery removes.

mod checkpoint;
mod error;
pub mod fault;
mod handle;
mod lock;
pub mod perm;
mod recovery;
mod segment;
mod shared;
mod stats;
pub mod writer;

pub use checkpoint::{load as load_checkpoint, Checkpoint, CHECKPOINT_FILE};
pub use error::{errno_name, StoreError, StoreResult};
pub use handle::{CloseError, CloseReport, Data, Store, StoreConfig, Submitted};
pub use lock::LOCK_FILE;
pub use segment::SEGMENTS_DIR;
pub use stats::StatsSnapshot;
