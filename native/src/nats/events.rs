//! Log lines of the NATS source, queued for Python to log.
//!
//! The connection's callbacks and the source's tasks run on the NATS runtime thread, which
//! never touches Python: what they have to say is queued here as (level, text) and the event
//! loop, woken through the source's [`Notifier`], takes the lines and logs them with Python's
//! `logging` (the level as Python's number, the text already formatted).

use std::sync::{Arc, Mutex, PoisonError};

use crate::notify::Notifier;

/// How bad a line is: Python's `logging` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `logging.DEBUG`: for a developer only.
    Debug,
    /// `logging.INFO`: progress worth a line.
    Info,
    /// `logging.WARNING`: something to look at; the source goes on.
    Warning,
    /// `logging.ERROR`: something a person must fix (a refused sign-in); the source goes on
    /// trying.
    Error,
}

impl Level {
    /// Python's number for the level (`logging.WARNING` is 30).
    pub fn levelno(self) -> u8 {
        match self {
            Level::Debug => 10,
            Level::Info => 20,
            Level::Warning => 30,
            Level::Error => 40,
        }
    }
}

/// The queue of lines not yet taken, and whom to wake when one is added.
#[derive(Debug, Default)]
pub struct Events {
    /// Lines in the order they were said.
    lines: Mutex<Vec<(Level, String)>>,
    /// Woken at each line (`None`: nobody watches, as in tests that take the lines).
    wake: Option<Arc<Notifier>>,
}

impl Events {
    /// A queue that wakes `wake` at each line.
    pub fn new(wake: Option<Arc<Notifier>>) -> Events {
        Events {
            lines: Mutex::new(Vec::new()),
            wake,
        }
    }

    /// Queues a line.
    pub fn say(&self, level: Level, text: impl Into<String>) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((level, text.into()));
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }

    /// Takes every queued line, oldest first.
    pub fn take(&self) -> Vec<(Level, String)> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_in_order_and_wake_the_watcher() {
        let notifier = Arc::new(Notifier::new().expect("pair"));
        let events = Events::new(Some(notifier.clone()));
        events.say(Level::Warning, "one");
        events.say(Level::Error, String::from("two"));
        assert_eq!(notifier.drain(), 2);
        assert_eq!(
            events.take(),
            vec![(Level::Warning, "one".into()), (Level::Error, "two".into())]
        );
        assert!(events.take().is_empty());
        assert_eq!(Level::Error.levelno(), 40);
    }
}
