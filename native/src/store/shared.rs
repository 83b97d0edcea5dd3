//! State shared between the writer task and the threads that submit to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

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
    /// Things the service should log (retries), oldest first, at most `MAX_EVENTS`.
    events: Mutex<VecDeque<String>>,
}

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
