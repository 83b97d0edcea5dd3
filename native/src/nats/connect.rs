//! The connection to the NATS servers: async-nats options from the source's settings, and
//! what the connection says (each failed attempt, a disconnect, a reconnect) as log lines.
//!
//! One client per source, connecting in the background and forever (as nats-py did with
//! `max_reconnect_attempts=-1` and `reconnect_time_wait=1`): [`connect`] returns at once, and
//! [`Link::connected`] waits. What bounds a start is the caller's deadline (the source's
//! `--nats-connect-timeout-s`), not the client.
//!
//! Why the attempts are watched through `reconnect_to_server_callback`: the connector's own
//! `Event::ClientError` carries only the kind of failure ("authorization violation", "IO
//! error"), not the server nor its words, while the callback runs before *every* attempt (the
//! first ones too, with `retry_on_initial_connect`) and sees each server's `last_error`. So
//! the callback says how the previous attempt failed, then picks the next server itself (the
//! one with the fewest failures, in turn) and the wait before it (none after a success, 1 s
//! after a failure).
//!
//! Credentials in the server URLs (`nats://user:password@host`, `nats://token@host`) are taken
//! out and given to the client as such: async-nats ignores user information in a URL, and the
//! URLs it sees then hold no secret. They are passed as written, not percent-decoded, as
//! nats-py passed them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{
    Client, ClientError, ConnectOptions, Event, ReconnectToServer, Server, ServerAddr,
};
use tokio::sync::watch;

use super::events::{Events, Level};

/// How long one attempt to connect to one server may take (nats-py's `connect_timeout`).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request (a JetStream API call) waits for its answer when its caller sets no
/// time of its own (nats-py's default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before trying again after a failed attempt (nats-py's `reconnect_time_wait`).
pub const RETRY_WAIT: Duration = Duration::from_secs(1);

/// The source's connection settings, as Python parsed them. (Its `Debug` shows the servers
/// without their user information.)
#[derive(Clone, Default)]
pub struct NatsConfig {
    /// Server URLs, `nats://` or `tls://`, user information kept on each (nats/url.py writes
    /// the same on all of them).
    pub servers: Vec<String>,
    /// A NATS credentials file (user JWT and nkey seed).
    pub creds: Option<PathBuf>,
    /// Certificates to trust for the servers' TLS (PEM); `None`: the system's.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate for TLS (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a start may wait for the servers (connection and lookups); `None`: forever.
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<&str> = self
            .servers
            .iter()
            .map(|s| match (s.find("://"), s.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => &s[at + 1..],
                _ => s.as_str(),
            })
            .collect();
        f.debug_struct("NatsConfig")
            .field("servers", &servers)
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why opening the source failed: each kind is a different exit of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Unusable as configured (a missing stream, a consumer that could lose messages, a
    /// credentials file that cannot be read): exit 2, a usage error.
    Refused(String),
    /// The stream or consumer is not the one the output directory was written from: exit 1.
    Mismatch(String),
    /// No server answered within the connect timeout: exit 1.
    Unavailable(String),
}

impl OpenError {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            OpenError::Refused(m) | OpenError::Mismatch(m) | OpenError::Unavailable(m) => m,
        }
    }
}

/// Credentials taken out of the server URLs.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    /// None given.
    None,
    /// `user:password@`.
    UserPassword(String, String),
    /// `token@` (no colon).
    Token(String),
}

impl std::fmt::Debug for UrlCredentials {
    /// Names the kind, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlCredentials::None => f.write_str("None"),
            UrlCredentials::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            UrlCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// Server URLs made ready for async-nats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// The URLs without user information.
    pub urls: Vec<String>,
    /// What the user information said (that of the first URL: nats/url.py writes the same
    /// on every one).
    pub credentials: UrlCredentials,
    /// Whether a URL asks for TLS (`tls://`).
    pub tls: bool,
}

/// Takes the user information out of `urls` (`SCHEME://[USERINFO@]HOST:PORT`); the user
/// information ends at the last `@`, as in nats/url.py.
pub fn split_servers(urls: &[String]) -> Result<Servers, String> {
    let mut servers = Servers {
        urls: Vec::with_capacity(urls.len()),
        credentials: UrlCredentials::None,
        tls: false,
    };
    for (i, url) in urls.iter().enumerate() {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "a NATS server URL needs a scheme: {}",
                without_secret(url)
            ));
        };
        if scheme != "nats" && scheme != "tls" {
            return Err(format!(
                "a NATS server URL starts with nats:// or tls://, not {scheme}://"
            ));
        }
        servers.tls |= scheme == "tls";
        let (userinfo, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, rest),
        };
        if i == 0 {
            servers.credentials = match userinfo {
                None => UrlCredentials::None,
                Some(info) => match info.split_once(':') {
                    Some((user, password)) => {
                        UrlCredentials::UserPassword(user.to_string(), password.to_string())
                    }
                    None => UrlCredentials::Token(info.to_string()),
                },
            };
        }
        servers.urls.push(format!("{scheme}://{host}"));
    }
    if servers.urls.is_empty() {
        return Err("no NATS server given".into());
    }
    Ok(servers)
}

/// `url` without its user information (for messages).
pub fn without_secret(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.rsplit_once('@').map_or(rest, |(_, host)| host)
        ),
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_string(),
    }
}

/// `HOST:PORT` of a server, as the lines name it.
pub fn host_port(addr: &ServerAddr) -> String {
    format!("{}:{}", addr.host(), addr.port())
}

/// The line for an attempt to connect to `server` that failed with `error` (async-nats's
/// text for it, the server's `last_error`), without the `NATS: ` prefix. A server that
/// refuses the client (its credentials, its TLS) is an ERROR: it will refuse again until a
/// person fixes it, though the source goes on trying. A server that cannot be reached is a
/// WARNING: it may come back.
pub fn attempt_line(server: &str, error: &str) -> (Level, String) {
    let error = error.trim();
    if error.starts_with("authorization violation") {
        // async-nats maps the server's `-ERR 'Authorization Violation'` (any case) to this
        // kind and keeps none of its words: these are the server's.
        return (
            Level::Error,
            format!("{server} refused the connection: Authorization Violation"),
        );
    }
    if let Some(said) = error.strip_prefix("IO error: nats: ") {
        // Another -ERR of the server in answer to CONNECT (an authentication timeout, a
        // permission): its words.
        return (
            Level::Error,
            format!("{server} refused the connection: {said}"),
        );
    }
    if error.starts_with("failed signing nonce") {
        return (
            Level::Error,
            format!(
                "cannot sign in to {server}: the credentials cannot sign the server's challenge"
            ),
        );
    }
    if let Some(said) = error.strip_prefix("TLS error: ") {
        return (Level::Error, format!("TLS with {server} failed: {said}"));
    }
    let said = error.strip_prefix("IO error: ").unwrap_or(error);
    // A certificate refused here ("invalid peer certificate: UnknownIssuer"), or a fatal
    // alert of the server's in the handshake (it wants a client certificate,
    // "CertificateRequired", or refuses ours, "BadCertificate"): either repeats until a
    // person fixes it.
    if said.contains("certificate") || said.starts_with("received fatal alert") {
        return (Level::Error, format!("TLS with {server} failed: {said}"));
    }
    (
        Level::Warning,
        format!("cannot connect to {server}: {said}"),
    )
}

/// The connection as the source sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// A server is connected now.
    pub connected: bool,
    /// Connections made so far (the first one, and each reconnect).
    pub connects: u64,
    /// The client is closed for good.
    pub closed: bool,
}

/// The server the callback picked last, and what the pool said of it then.
#[derive(Debug)]
struct Picked {
    /// Its address.
    addr: ServerAddr,
    /// Its place in the pool.
    index: usize,
    /// Its failed attempts before this one.
    failed_before: usize,
    /// Connections made before this attempt.
    connects_before: u64,
}

/// State shared by the connection's callbacks and the source: the connection's state, the
/// lines they say, and the last failure. Lives as long as the source.
#[derive(Debug)]
pub struct Link {
    /// Where the lines go.
    events: Arc<Events>,
    /// The connection's state; the source's tasks wait on it (a reconnect wakes them).
    state: watch::Sender<LinkState>,
    /// Set when the source closes the connection: a disconnect is then no news.
    closing: AtomicBool,
    /// The last attempt's failure, as said (for the message of a start that timed out).
    last_error: Mutex<Option<String>>,
    /// The server being tried, or last tried.
    picked: Mutex<Option<Picked>>,
    /// The last permissions violation the server reported (its words): a request it denies
    /// gets no answer, only this.
    denied: Mutex<Option<String>>,
}

impl Link {
    /// A link whose lines go to `events`.
    pub fn new(events: Arc<Events>) -> Arc<Link> {
        Arc::new(Link {
            events,
            state: watch::Sender::new(LinkState::default()),
            closing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            picked: Mutex::new(None),
            denied: Mutex::new(None),
        })
    }

    /// Where the lines go.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The connection's state now.
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// A receiver of the connection's state, to wait for a change.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// The source is closing the connection: a disconnect from now on is not said.
    pub fn closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// How the last failed attempt failed, as said (without `NATS: `).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last permissions violation the server reported, if any (its words).
    pub fn denied(&self) -> Option<String> {
        self.denied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps `text` as the last failure (a lookup the servers did not answer).
    pub fn note_failure(&self, text: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(text);
    }

    /// `HOST:PORT` of the server connected (or being tried).
    pub fn server(&self) -> Option<String> {
        self.picked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| host_port(&p.addr))
    }

    /// Waits until a server is connected; `false` if the client closed first.
    pub async fn connected(&self) -> bool {
        let mut state = self.state.subscribe();
        state
            .wait_for(|s| s.connected || s.closed)
            .await
            .is_ok_and(|s| s.connected)
    }

    /// Before each attempt to connect: says how the previous one failed, and picks the
    /// server to try and the wait before it.
    fn next_attempt(&self, pool: &[Server]) -> Option<ReconnectToServer> {
        if pool.is_empty() {
            return None;
        }
        let connects = self.state().connects;
        let mut picked = self.picked.lock().unwrap_or_else(PoisonError::into_inner);
        let mut delay = Duration::ZERO;
        let mut after = pool.len() - 1;
        if let Some(last) = picked.take() {
            after = last.index;
            if let Some(server) = pool.iter().find(|s| s.addr == last.addr) {
                if server.failed_attempts > last.failed_before {
                    let error = server.last_error.as_deref().unwrap_or("no reason given");
                    self.failed(attempt_line(&host_port(&server.addr), error));
                    delay = RETRY_WAIT;
                } else if connects == last.connects_before {
                    // The one failure that leaves no trace in the pool: the name resolved
                    // to no address.
                    self.failed((
                        Level::Warning,
                        format!(
                            "cannot connect to {}: its name resolves to no address",
                            host_port(&server.addr)
                        ),
                    ));
                    delay = RETRY_WAIT;
                }
            }
        }
        // The fewest failures first; among those, the next in the pool after the last one.
        let fewest = pool.iter().map(|s| s.failed_attempts).min().unwrap_or(0);
        let index = (1..=pool.len())
            .map(|step| (after + step) % pool.len())
            .find(|&i| pool[i].failed_attempts == fewest)
            .unwrap_or(0);
        let server = &pool[index];
        *picked = Some(Picked {
            addr: server.addr.clone(),
            index,
            failed_before: server.failed_attempts,
            connects_before: connects,
        });
        Some(ReconnectToServer {
            addr: server.addr.clone(),
            delay: Some(delay),
        })
    }

    /// Says a failed attempt and keeps it as the last failure.
    fn failed(&self, (level, text): (Level, String)) {
        self.events.say(level, format!("NATS: {text}"));
        self.note_failure(text);
    }

    /// What the client tells of the connection.
    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => {
                let mut connects = 0;
                self.state.send_modify(|s| {
                    s.connected = true;
                    s.connects += 1;
                    connects = s.connects;
                });
                if connects > 1 {
                    let server = self.server().unwrap_or_else(|| "?".into());
                    self.events
                        .say(Level::Info, format!("NATS: reconnected to {server}"));
                }
            }
            Event::Disconnected => {
                self.state.send_modify(|s| s.connected = false);
                if !self.closing.load(Ordering::SeqCst) {
                    self.events
                        .say(Level::Warning, "NATS: disconnected; reconnecting");
                }
            }
            Event::Closed => self.state.send_modify(|s| {
                s.connected = false;
                s.closed = true;
            }),
            Event::Draining => {}
            Event::LameDuckMode => self.events.say(
                Level::Warning,
                "NATS: the server is going away (lame duck mode)",
            ),
            Event::SlowConsumer(sid) => self.events.say(
                Level::Warning,
                format!("NATS: subscription {sid} fell behind: the client dropped messages"),
            ),
            Event::ServerError(error) => {
                let text = error.to_string();
                let text = text.strip_prefix("nats: ").unwrap_or(&text);
                if text.to_ascii_lowercase().contains("permissions violation") {
                    let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
                    if denied.as_deref() == Some(text) {
                        // The same denial again (one per publish of a batch): said once.
                        return;
                    }
                    *denied = Some(text.to_string());
                }
                self.events
                    .say(Level::Warning, format!("NATS: server error: {text}"));
            }
            // A failed attempt: said with its server and reason by `next_attempt`.
            Event::ClientError(ClientError::Other(kind)) => self
                .events
                .say(Level::Debug, format!("NATS: attempt failed: {kind}")),
            Event::ClientError(error) => {
                let text = error.to_string();
                let text = text.strip_prefix("nats: ").unwrap_or(&text);
                self.events.say(Level::Warning, format!("NATS: {text}"));
            }
        }
    }
}

/// Refuses a file the client will read at each attempt that cannot be read now (the
/// credentials file is read once, here).
fn readable(what: &str, path: &Path) -> Result<(), OpenError> {
    fs::File::open(path)
        .map(drop)
        .map_err(|e| OpenError::Refused(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The client for `config`, connecting in the background (see the module doc); its events
/// go to `link`. Refuses settings it cannot use.
pub async fn connect(config: &NatsConfig, link: &Arc<Link>) -> Result<Client, OpenError> {
    let servers = split_servers(&config.servers).map_err(OpenError::Refused)?;
    let addrs = servers
        .urls
        .iter()
        .map(|url| {
            url.parse::<ServerAddr>()
                .map_err(|e| OpenError::Refused(format!("bad NATS server URL {url}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let on_event = link.clone();
    let on_attempt = link.clone();
    let mut options = ConnectOptions::new()
        .name("shovel")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(ATTEMPT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(move |event| {
            on_event.on_event(event);
            std::future::ready(())
        })
        .reconnect_to_server_callback(move |pool, _info| {
            std::future::ready(on_attempt.next_attempt(&pool))
        });
    if let Some(path) = &config.creds {
        let contents = fs::read_to_string(path).map_err(|e| {
            OpenError::Refused(format!(
                "cannot read the NATS credentials file {}: {e}",
                path.display()
            ))
        })?;
        options = options.credentials(&contents).map_err(|e| {
            OpenError::Refused(format!(
                "cannot use the NATS credentials file {}: {e}",
                path.display()
            ))
        })?;
    }
    options = match servers.credentials {
        UrlCredentials::None => options,
        UrlCredentials::UserPassword(user, password) => options.user_and_password(user, password),
        UrlCredentials::Token(token) => options.token(token),
    };
    if let Some(ca) = &config.tls_ca {
        readable("TLS CA file", ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            readable("TLS client certificate", cert)?;
            readable("TLS client key", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(OpenError::Refused(
                "tls_cert and tls_key go together: a client certificate needs its key".into(),
            ))
        }
    }
    if servers.tls || config.tls_ca.is_some() || config.tls_cert.is_some() {
        options = options.require_tls(true);
    }
    options.connect(addrs).await.map_err(|e| {
        OpenError::Refused(format!("cannot connect to {}: {e}", servers.urls.join(",")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn debug_shows_no_credentials() {
        let config = NatsConfig {
            servers: urls(&[
                "nats://u:p/w@rd@127.0.0.1:4222",
                "tls://tok@h:1",
                "nats://h2",
            ]),
            ..NatsConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            shown.contains(r#"servers: ["127.0.0.1:4222", "h:1", "nats://h2"]"#),
            "{shown}"
        );
        assert!(!shown.contains("p/w") && !shown.contains("tok"), "{shown}");
    }

    #[test]
    fn credentials_leave_the_urls() {
        let servers = split_servers(&urls(&[
            "nats://u:p/w@rd@127.0.0.1:4222",
            "nats://u:p/w@rd@127.0.0.2:4223",
        ]))
        .expect("split");
        assert_eq!(
            servers.urls,
            urls(&["nats://127.0.0.1:4222", "nats://127.0.0.2:4223"])
        );
        assert_eq!(
            servers.credentials,
            UrlCredentials::UserPassword("u".into(), "p/w@rd".into())
        );
        assert!(!servers.tls);
        // Written as given: no percent-decoding (nats-py sent them so).
        let token = split_servers(&urls(&["tls://s%40cret@[::1]:4222"])).expect("split");
        assert_eq!(token.credentials, UrlCredentials::Token("s%40cret".into()));
        assert_eq!(token.urls, urls(&["tls://[::1]:4222"]));
        assert!(token.tls);
        let none = split_servers(&urls(&["nats://h:1"])).expect("split");
        assert_eq!(none.credentials, UrlCredentials::None);
        assert!(split_servers(&urls(&["http://h:1"])).is_err());
        assert!(split_servers(&[]).is_err());
        assert_eq!(without_secret("nats://u:p@h:1"), "nats://h:1");
        assert_eq!(
            format!("{:?}", servers.credentials),
            "UserPassword(\"u\", ***)"
        );
    }

    #[test]
    fn attempt_lines_say_who_refused_and_why() {
        let s = "127.0.0.1:4222";
        for (error, level, line) in [
            (
                "authorization violation: nats: authorization violation",
                Level::Error,
                "127.0.0.1:4222 refused the connection: Authorization Violation",
            ),
            (
                "IO error: nats: Authentication Timeout",
                Level::Error,
                "127.0.0.1:4222 refused the connection: Authentication Timeout",
            ),
            (
                "IO error: Connection refused (os error 111)",
                Level::Warning,
                "cannot connect to 127.0.0.1:4222: Connection refused (os error 111)",
            ),
            (
                "timed out",
                Level::Warning,
                "cannot connect to 127.0.0.1:4222: timed out",
            ),
            (
                "IO error: invalid peer certificate: UnknownIssuer",
                Level::Error,
                "TLS with 127.0.0.1:4222 failed: invalid peer certificate: UnknownIssuer",
            ),
            (
                "IO error: received fatal alert: CertificateRequired",
                Level::Error,
                "TLS with 127.0.0.1:4222 failed: received fatal alert: CertificateRequired",
            ),
            (
                "TLS error: could not load root certificates",
                Level::Error,
                "TLS with 127.0.0.1:4222 failed: could not load root certificates",
            ),
            (
                "failed signing nonce",
                Level::Error,
                "cannot sign in to 127.0.0.1:4222: the credentials cannot sign the server's challenge",
            ),
        ] {
            assert_eq!(attempt_line(s, error), (level, line.to_string()), "{error}");
        }
    }

    #[test]
    fn attempts_go_round_the_servers_with_the_fewest_failures() {
        let link = Link::new(Arc::new(Events::new(None)));
        let addr = |p: u16| {
            format!("nats://127.0.0.1:{p}")
                .parse::<ServerAddr>()
                .unwrap()
        };
        let server = |p: u16, failed: usize, error: Option<&str>| Server {
            addr: addr(p),
            failed_attempts: failed,
            did_connect: false,
            is_discovered: false,
            last_error: error.map(str::to_string),
        };
        // First attempt: the first server, at once, nothing said.
        let first = link
            .next_attempt(&[server(1, 0, None), server(2, 0, None)])
            .expect("picked");
        assert_eq!((first.addr.port(), first.delay), (1, Some(Duration::ZERO)));
        assert!(link.events().take().is_empty());
        // It failed: said, and the other one is next, after the wait.
        let refused = "IO error: Connection refused (os error 111)";
        let second = link
            .next_attempt(&[server(1, 1, Some(refused)), server(2, 0, None)])
            .expect("picked");
        assert_eq!((second.addr.port(), second.delay), (2, Some(RETRY_WAIT)));
        assert_eq!(
            link.events().take(),
            vec![(
                Level::Warning,
                "NATS: cannot connect to 127.0.0.1:1: Connection refused (os error 111)".into()
            )]
        );
        // Both failed once: round the pool, from the one after the last.
        let third = link
            .next_attempt(&[server(1, 1, Some(refused)), server(2, 1, Some("timed out"))])
            .expect("picked");
        assert_eq!(third.addr.port(), 1);
        assert_eq!(
            link.last_error().as_deref(),
            Some("cannot connect to 127.0.0.1:2: timed out")
        );
    }
}
