//! A wake-up channel to the Python event loop that never touches Python.
//!
//! A task with news (the store's writer, at each durable step) writes a byte to one end of a
//! socket pair; the event loop watches the other end's file descriptor (`loop.add_reader`)
//! and, when woken, reads the counters. Each native object Python watches has a notifier of
//! its own. No Rust thread ever
//! attaches to the interpreter, so an interpreter that is finalizing or a loop that is closed
//! cannot be reached from tokio threads at all.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Both ends of the wake-up channel.
#[derive(Debug)]
pub struct Notifier {
    /// The end a task with news writes to.
    tx: UnixStream,
    /// The end the event loop watches.
    rx: UnixStream,
}

impl Notifier {
    /// Creates a non-blocking socket pair.
    pub fn new() -> io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Notifier { tx, rx })
    }

    /// Wakes the watcher. A full socket buffer already means "wake up", so it is not an error.
    pub fn notify(&self) {
        let _ = (&self.tx).write(&[1]);
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Consumes pending wake-ups; returns how many bytes were pending.
    pub fn drain(&self) -> usize {
        let mut buf = [0u8; 256];
        let mut total = 0;
        loop {
            match (&self.rx).read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(_) => return total,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_then_drain() {
        let n = Notifier::new().expect("pair");
        assert_eq!(n.drain(), 0);
        n.notify();
        n.notify();
        assert_eq!(n.drain(), 2);
        assert_eq!(n.drain(), 0);
    }
}
