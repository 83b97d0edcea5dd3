//! State shared between the writer task and the threads that submit to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::error::StoreError;
use super::stats::Stats;
use crate::notify::Notifier;

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
    /// Things the service should log (retries), oldest first, at most `MAX_EVENTS`.
    events: Mutex<VecDeque<String>>,
    /// Bytes accepted but not yet written: held in memory, so bounded on their own.
    unwritten_bytes: AtomicU64,
    /// A submit was refused for unwritten bytes: wake the event loop after the next write.
    wake_on_write: AtomicBool,
}

/// Bytes accepted but not yet written (held in memory) beyond which `submit` reports full,
/// unless nothing is waiting to be written. Enough to keep the writer busy, small enough to
/// keep the process's memory flat whatever the disk's speed and `max_inflight_bytes`.
pub const MAX_UNWRITTEN_BYTES: u64 = 4 * 1024 * 1024;

/// How many unread events are kept; older ones are replaced by a count.
const MAX_EVENTS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    /// Fresh state around `notifier`.
    pub fn new(notifier: Notifier) -> Shared {
        Shared {
            stats: Stats::default(),
            notifier,
            first_error: Mutex::new(None),
            failed: AtomicBool::new(false),
            events: Mutex::new(VecDeque::new()),
            unwritten_bytes: AtomicU64::new(0),
            wake_on_write: AtomicBool::new(false),
        }
    }

    /// Counts `len` more bytes held for the writer, unless that would pass
    /// [`MAX_UNWRITTEN_BYTES`] (and some are held already): then returns false, and the next
    /// write wakes the event loop.
    pub fn hold(&self, len: u64) -> bool {
        let over = |held: u64| held > 0 && held + len > MAX_UNWRITTEN_BYTES;
        if over(self.unwritten_bytes.load(Ordering::SeqCst)) {
            self.wake_on_write.store(true, Ordering::SeqCst);
            // Looked at again after the flag: a write that ended in between either sees the
            // flag or left a count that lets this one in, so no wake-up is lost.
            if over(self.unwritten_bytes.load(Ordering::SeqCst)) {
                return false;
            }
        }
        self.unwritten_bytes.fetch_add(len, Ordering::SeqCst);
        true
    }

    /// The writer is done with `len` held bytes (written or not): wakes a refused submitter.
    pub fn release(&self, len: u64) {
        self.unwritten_bytes.fetch_sub(len, Ordering::SeqCst);
        if self.wake_on_write.swap(false, Ordering::SeqCst) {
            self.notifier.notify();
        }
    }

    /// Queues a message for the service's log and wakes the event loop.
    pub fn note(&self, message: String) {
        {
            let mut events = lock(&self.events);
            if events.len() >= MAX_EVENTS {
                events.pop_front();
            }
            events.push_back(message);
        }
        self.notifier.notify();
    }

    /// Takes the queued messages.
    pub fn take_events(&self) -> Vec<String> {
        lock(&self.events).drain(..).collect()
    }

    /// Whether an error has occurred.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<StoreError> {
        lock(&self.first_error).clone()
    }

    /// Records `err` (kept only if it is the first), counts it, and wakes the event loop.
    pub fn fail(&self, err: StoreError) {
        {
            let mut guard = lock(&self.first_error);
            if guard.is_none() {
                *guard = Some(err);
            }
        }
        self.failed.store(true, Ordering::Release);
        self.stats.errors.fetch_add(1, Ordering::AcqRel);
        self.notifier.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_are_bounded_and_a_refused_submitter_is_woken() {
        let shared = Shared::new(Notifier::new().expect("pair"));
        // One batch larger than the bound is let in when nothing is held.
        assert!(shared.hold(MAX_UNWRITTEN_BYTES + 1));
        shared.release(MAX_UNWRITTEN_BYTES + 1);
        assert_eq!(shared.notifier.drain(), 0, "nobody was refused: no wake-up");
        assert!(shared.hold(MAX_UNWRITTEN_BYTES - 10));
        assert!(shared.hold(10));
        assert!(!shared.hold(1), "over the bound");
        shared.release(10);
        assert_eq!(shared.notifier.drain(), 1, "the refused submitter is woken");
        assert!(shared.hold(1));
        shared.release(1);
        assert_eq!(shared.notifier.drain(), 0);
    }
}
