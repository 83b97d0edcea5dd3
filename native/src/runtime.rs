//! The dedicated tokio runtime thread: start it, hand out its `Handle`, stop it, join it.
//!
//! The runtime is built, driven and dropped on its own named thread, never inside another
//! runtime and never while a caller is attached to Python. Stopping is explicit: cancel the
//! token, and the thread shuts the runtime down (giving blocking tasks a short grace) and exits.
//!
//! Every runtime has timers. Only one that talks over the network (the NATS source's) enables
//! the IO driver as well: the store writes files on blocking threads and needs no reactor.

use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// How long runtime shutdown waits for blocking tasks (a stuck fsync) before leaving them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// Whether a runtime drives sockets (tokio's IO driver), besides timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Timers only: files are written on blocking threads (the store).
    Off,
    /// Timers and sockets (a network client).
    On,
}

/// A running runtime thread.
#[derive(Debug)]
pub struct RuntimeThread {
    /// Spawns onto the runtime; valid until the thread has stopped.
    handle: Handle,
    /// Cancelled to make the thread shut its runtime down and exit.
    stop: CancellationToken,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    /// Starts a thread named `name` running a current-thread runtime, with the IO driver when
    /// `io` says so, until its stop token is cancelled.
    pub fn start(name: &str, io: Io) -> io::Result<RuntimeThread> {
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::sync_channel::<io::Result<Handle>>(1);
        let thread_stop = stop.clone();
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut builder = Builder::new_current_thread();
                builder.enable_time();
                if io == Io::On {
                    builder.enable_io();
                }
                let rt = match builder
                    .thread_name(format!(
                        "{}-blocking",
                        thread::current().name().unwrap_or("shovel")
                    ))
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(thread_stop.cancelled());
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("runtime thread exited before starting"))??;
        Ok(RuntimeThread {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// The handle to spawn tasks with.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A token whose cancellation stops the runtime (tasks may hold it to stop it when done).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits for the thread to exit on its own (a holder of the stop token ends it). Blocking.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stops the runtime and waits for its thread to exit. Blocking: call it with the GIL
    /// released. (Dropping a `RuntimeThread` instead never blocks: the thread is detached and
    /// exits when a holder of [`RuntimeThread::stop_token`] cancels it.)
    pub fn stop_and_join(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_tasks_then_stops() {
        let rt = RuntimeThread::start("shovel-test", Io::Off).expect("start");
        let (tx, rx) = mpsc::channel();
        rt.handle().spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = tx.send(thread::current().name().map(str::to_string));
        });
        let name = rx.recv_timeout(Duration::from_secs(5)).expect("task ran");
        assert_eq!(name.as_deref(), Some("shovel-test"));
        rt.stop_and_join();
    }

    #[test]
    fn drives_sockets_with_io_on() {
        let rt = RuntimeThread::start("shovel-test-io", Io::On).expect("start");
        let (tx, rx) = mpsc::channel();
        rt.handle().spawn(async move {
            let echoed = async {
                let (a, b) = tokio::net::UnixStream::pair()?;
                a.writable().await?;
                a.try_write(b"ping")?;
                b.readable().await?;
                let mut buf = [0u8; 8];
                let n = b.try_read(&mut buf)?;
                io::Result::Ok(buf[..n].to_vec())
            };
            let _ = tx.send(echoed.await.map_err(|e| e.to_string()));
        });
        let got = rx.recv_timeout(Duration::from_secs(5)).expect("task ran");
        assert_eq!(got.as_deref(), Ok(&b"ping"[..]));
        rt.stop_and_join();
    }
}
