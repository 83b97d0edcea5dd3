//! State shared between the writer task and the threads that submit to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::error::StoreError;
use super::notify::Notifier;
use super::stats::Stats;

/// Counters, the first error, and the wake-up channel.
#[derive(Debug)]
pub struct Shared {
    /// Live counters.
    pub stats: Stats,
    /// Wakes the event loop after durable progress or an error.
    pub notifier: Notifier,
    /// Set once with the first error; later errors are only counted.
    first_error: Mutex<Option<StoreError>>,
    /// Mirrors `first_error.is_some()` for lock-free checks on the hot path.
    failed: AtomicBool,
}

impl Shared {
    /// Fresh state around `notifier`.
    pub fn new(notifier: Notifier) -> Shared {
        Shared {
            stats: Stats::default(),
            notifier,
            first_error: Mutex::new(None),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether an error has occurred.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<StoreError> {
        match self.first_error.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records `err` (kept only if it is the first), counts it, and wakes the event loop.
    pub fn fail(&self, err: StoreError) {
        {
            let mut guard = match self.first_error.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if guard.is_none() {
                *guard = Some(err);
            }
        }
        self.failed.store(true, Ordering::Release);
        self.stats.errors.fetch_add(1, Ordering::AcqRel);
        self.notifier.notify();
    }
}
