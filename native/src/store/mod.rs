//! The durable store, free of Python: recovery, segment writes, grouped fsyncs, checkpoints.

mod checkpoint;
mod error;
pub mod fault;
mod handle;
mod lock;
mod notify;
pub mod perm;
mod recovery;
mod segment;
mod shared;
mod stats;
pub mod writer;

pub use checkpoint::{Checkpoint, CHECKPOINT_FILE};
pub use error::{errno_name, StoreError, StoreResult};
pub use handle::{CloseError, CloseReport, Data, Store, StoreConfig, Submitted};
pub use lock::LOCK_FILE;
pub use segment::SEGMENTS_DIR;
pub use stats::StatsSnapshot;
