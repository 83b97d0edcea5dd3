//! Binding the durable pull consumer: the stream and consumer lookups, the checks against
//! the checkpoint and the refusals of consumers that could lose messages, and the consumer's
//! creation; the same questions, answers and messages as the Python source's `open()`.
//!
//! The JetStream API is asked with plain requests (`$JS.API.STREAM.INFO.<stream>`, ...) whose
//! answers are read into async-nats's own `stream::Info` and `consumer::Info`. An answer is
//! one of (see [`Answer`]): the thing asked for; 404, it does not exist; 400, a request the
//! server refuses (only a creation's is told apart); or "not now": no answer in time, no
//! responders (no JetStream, or no leader yet), another error code, no server connected.
//! "Not now" is waited out: a WARNING line, a second's pause, the whole lookup again (a
//! cluster electing its leaders, a server going away), until the caller's deadline.
//!
//! A consumer shovel creates is created with `action: "create"`: an existing one with other
//! settings is then an error (400), not changed, and the one found (another replica's,
//! created at the same moment) is used and checked as any other.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy};
use async_nats::jetstream::stream;
use async_nats::{Client, Message, RequestError, RequestErrorKind};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::connect::{self, Link, NatsConfig, OpenError};
use super::core::PULL_EXPIRES;
use super::events::{Events, Level};
use super::text::{self, format_g, py_repr};

/// How long to wait before looking the stream and the consumer up again when the servers
/// did not answer.
pub const LOOKUP_RETRY: Duration = Duration::from_secs(1);
/// A consumer's `ack_wait` when its config leaves it to the server.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// What the source asks of its consumer, and what it needs to say so.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream's name.
    pub stream: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// The consumer's filter subject (`subject=`), if any.
    pub subject: Option<String>,
    /// `ack_wait` of a consumer shovel creates.
    pub ack_wait: Duration,
    /// `max_ack_pending` of a consumer shovel creates.
    pub max_ack_pending: i64,
    /// The run's shutdown timeout (a consumer's `ack_wait` should be longer).
    pub shutdown_timeout: Duration,
    /// The first server, without user information, as the messages name it.
    pub server: String,
    /// Messages asked for in one pull request (`batch=`): a consumer's `max_batch` must
    /// allow it.
    pub batch: usize,
}

/// What the checkpoint says of the stream and consumer it was written from (present when
/// the output directory holds records from them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// When the stream was created; empty: not recorded.
    pub created: String,
    /// When the consumer was created; empty: not recorded.
    pub consumer_created: String,
}

/// The consumer bound, checked and usable.
#[derive(Debug, Clone)]
pub struct Bound {
    /// When the stream was created ([`text::created`]).
    pub stream_created: String,
    /// When the consumer was created ([`text::created`]).
    pub consumer_created: String,
    /// The consumer's state when it was bound.
    pub info: consumer::Info,
}

/// An error answer of the JetStream API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApiError {
    /// Its status code (404, 400, 503, ...).
    pub code: u16,
    /// The server's own error code.
    #[serde(default)]
    pub err_code: u32,
    /// The server's words.
    #[serde(default)]
    pub description: String,
}

/// Any API answer, read for its error first.
#[derive(Deserialize)]
struct ErrorPart {
    /// Present in an error answer only.
    #[serde(default)]
    error: Option<ApiError>,
}

/// What a JetStream API request came back with.
#[derive(Debug)]
pub enum Answer<T> {
    /// What was asked for.
    Found(T),
    /// 404: it does not exist.
    Missing,
    /// 400: the server refuses the request (its words).
    BadRequest(String),
    /// No usable answer now (the reason): ask again later.
    NotNow(String),
    /// An answer that cannot be read (the reason): asking again would not help.
    Unreadable(String),
}

/// Reads a request's outcome (see the module doc).
pub fn answer<T: DeserializeOwned>(reply: Result<Message, RequestError>) -> Answer<T> {
    let message = match reply {
        Ok(message) => message,
        Err(e) => {
            return Answer::NotNow(match e.kind() {
                RequestErrorKind::TimedOut => "no answer in time".into(),
                RequestErrorKind::NoResponders => {
                    "no responders (JetStream not enabled, or no leader yet)".into()
                }
                _ => e.to_string(),
            })
        }
    };
    if let Some(status) = message.status {
        let said = message.description.as_deref().unwrap_or("");
        return Answer::NotNow(format!("status {status} {said}").trim_end().to_string());
    }
    match serde_json::from_slice::<ErrorPart>(&message.payload) {
        Ok(ErrorPart { error: Some(error) }) => match error.code {
            404 => Answer::Missing,
            400 => Answer::BadRequest(error.description),
            code => Answer::NotNow(format!("{} (code {code})", error.description)),
        },
        Ok(ErrorPart { error: None }) => match serde_json::from_slice(&message.payload) {
            Ok(found) => Answer::Found(found),
            Err(e) => Answer::Unreadable(e.to_string()),
        },
        Err(e) => Answer::Unreadable(e.to_string()),
    }
}

/// Where JetStream API requests go: the client, or a test's stand-in.
pub(crate) trait Api {
    /// Sends `payload` to the API `subject` (after `$JS.API.`) and waits for the answer.
    async fn ask(&self, subject: String, payload: Bytes) -> Result<Message, RequestError>;
}

impl Api for Client {
    async fn ask(&self, subject: String, payload: Bytes) -> Result<Message, RequestError> {
        self.send_request(
            format!("$JS.API.{subject}"),
            async_nats::Request::new().payload(payload),
        )
        .await
    }
}

/// Why a lookup ended without a consumer.
#[derive(Debug)]
enum Stop {
    /// For good.
    Open(OpenError),
    /// Not now (the line's text): try again later.
    NotNow(String),
}

impl From<OpenError> for Stop {
    fn from(e: OpenError) -> Stop {
        Stop::Open(e)
    }
}

/// The source's `open()` without its subscriptions: connects, then binds the consumer,
/// waiting while no server answers, all within `config.connect_timeout`. Returns the client
/// with the consumer.
pub async fn open(
    config: &NatsConfig,
    spec: &ConsumerSpec,
    restored: Option<&Restored>,
    link: &std::sync::Arc<Link>,
) -> Result<(Client, Bound), OpenError> {
    let client = connect::connect(config, link).await?;
    let bound = bind(&client, link, spec, restored);
    let bound = match config.connect_timeout {
        None => bound.await,
        Some(limit) => match tokio::time::timeout(limit, bound).await {
            Ok(bound) => bound,
            Err(_) => {
                let why = link
                    .last_error()
                    .unwrap_or_else(|| "no attempt finished".into());
                let what = if link.state().connects == 0 {
                    "no NATS server accepted the connection"
                } else {
                    "the NATS servers did not answer"
                };
                Err(OpenError::Unavailable(format!(
                    "{what} within {}s: {why}",
                    format_g(limit.as_secs_f64())
                )))
            }
        },
    };
    bound.map(|bound| (client, bound))
}

/// Looks the stream and consumer up (creating the consumer if missing) until that is done
/// or refused, waiting out the times when no server answers.
pub(crate) async fn bind(
    api: &impl Api,
    link: &Link,
    spec: &ConsumerSpec,
    restored: Option<&Restored>,
) -> Result<Bound, OpenError> {
    loop {
        if !link.connected().await {
            return Err(OpenError::Unavailable(
                "the NATS connection is closed".into(),
            ));
        }
        match look_up(api, link.events(), spec, restored).await {
            Ok(bound) => return Ok(bound),
            Err(Stop::Open(e)) => return Err(e),
            Err(Stop::NotNow(why)) => {
                // A cluster electing its leaders, a server going away: wait, as for a server.
                link.events().say(
                    Level::Warning,
                    format!(
                        "NATS: {why}; trying again in {}s",
                        format_g(LOOKUP_RETRY.as_secs_f64())
                    ),
                );
                link.note_failure(why);
                tokio::time::sleep(LOOKUP_RETRY).await;
            }
        }
    }
}

/// One pass: the stream, checked against the checkpoint, and the consumer (created if
/// missing), checked.
async fn look_up(
    api: &impl Api,
    events: &Events,
    spec: &ConsumerSpec,
    restored: Option<&Restored>,
) -> Result<Bound, Stop> {
    let (s, c) = (&spec.stream, &spec.consumer);
    let reply = api.ask(format!("STREAM.INFO.{s}"), Bytes::new()).await;
    let info: stream::Info = match answer(reply) {
        Answer::Found(info) => info,
        Answer::Missing => {
            return Err(
                OpenError::Refused(format!("stream {s} does not exist on {}", spec.server)).into(),
            )
        }
        Answer::BadRequest(why) | Answer::NotNow(why) => {
            return Err(Stop::NotNow(format!("cannot look up stream {s}: {why}")))
        }
        Answer::Unreadable(why) => return Err(unreadable(&format!("stream {s}"), &why).into()),
    };
    let stream_created = text::created(info.created);
    let subjects = &info.config.subjects;
    if let Some(subject) = &spec.subject {
        if !subjects.is_empty() && !subjects.iter().any(|x| text::subjects_overlap(subject, x)) {
            return Err(OpenError::Refused(format!(
                "subject filter {subject} matches none of stream {s}'s subjects ({}): nothing \
                 would ever be delivered",
                subjects.join(", ")
            ))
            .into());
        }
    }
    if let Some(restored) = restored {
        if !restored.created.is_empty() && restored.created != stream_created {
            return Err(OpenError::Mismatch(format!(
                "stream {s} was created at {stream_created}, but this output directory holds \
                 records of a stream of that name created at {}: it was deleted and made \
                 again, its sequences start over (use a new --output-dir)",
                restored.created
            ))
            .into());
        }
    }
    let info = match consumer_info(api, spec).await? {
        Some(info) => info,
        None if restored.is_some() => {
            return Err(OpenError::Mismatch(format!(
                "consumer {c} no longer exists on stream {s}, but this output directory holds \
                 records read through it: one made again would deliver the stream from its \
                 first message, and they would be stored twice (use a new --output-dir)"
            ))
            .into())
        }
        None => create(api, events, spec).await?,
    };
    let consumer_created = text::created(info.created);
    if let Some(restored) = restored {
        if !restored.consumer_created.is_empty() && restored.consumer_created != consumer_created {
            return Err(OpenError::Mismatch(format!(
                "consumer {c} was created at {consumer_created}, but this output directory \
                 holds records read through a consumer of that name created at {}: it was \
                 deleted and made again, and delivers the stream from its first message (use \
                 a new --output-dir)",
                restored.consumer_created
            ))
            .into());
        }
    }
    check(&info.config, events, spec)?;
    Ok(Bound {
        stream_created,
        consumer_created,
        info,
    })
}

/// Refuses a consumer shovel cannot use safely; warns of an `ack_wait` shorter than a stop.
fn check(config: &consumer::Config, events: &Events, spec: &ConsumerSpec) -> Result<(), OpenError> {
    let c = &spec.consumer;
    if config.deliver_subject.is_some() {
        return Err(OpenError::Refused(format!(
            "consumer {c} is a push consumer; shovel needs a pull consumer"
        )));
    }
    if config.ack_policy != AckPolicy::Explicit {
        return Err(OpenError::Refused(format!(
            "consumer {c} acknowledges with policy {}; shovel needs explicit acknowledgements \
             (each message once it is durable)",
            ack_policy_name(config.ack_policy)
        )));
    }
    if let Some(subject) = &spec.subject {
        if config.filter_subject != *subject {
            let filters = if config.filter_subject.is_empty() {
                "no subject".to_string()
            } else {
                format!("[{}]", py_repr(&config.filter_subject))
            };
            return Err(OpenError::Refused(format!(
                "consumer {c} filters {filters}, not {subject}: drop subject= or use another \
                 consumer name"
            )));
        }
    }
    if !matches!(config.max_deliver, 0 | -1) {
        return Err(OpenError::Refused(format!(
            "consumer {c} has max_deliver {}: a message delivered that many times (each stop \
             gives back what is in flight, each crash leaves it to be redelivered) would never \
             be delivered again, nor stored; shovel needs max_deliver -1 (no limit)",
            config.max_deliver
        )));
    }
    if config.max_batch > 0 && usize::try_from(config.max_batch).is_ok_and(|m| m < spec.batch) {
        return Err(OpenError::Refused(format!(
            "consumer {c} has max_batch {}, below batch={}: the server would turn down every \
             pull request; give batch={} or less",
            config.max_batch, spec.batch, config.max_batch
        )));
    }
    if !config.max_expires.is_zero() && config.max_expires < PULL_EXPIRES {
        return Err(OpenError::Refused(format!(
            "consumer {c} has max_expires {}s, below the {}s each pull request of shovel's \
             waits: the server would turn down every one; shovel needs max_expires unset or \
             at least {}s",
            seconds(config.max_expires),
            seconds(PULL_EXPIRES),
            seconds(PULL_EXPIRES)
        )));
    }
    if !config.inactive_threshold.is_zero() {
        return Err(OpenError::Refused(format!(
            "consumer {c} has inactive_threshold {}s: the server deletes it when no replica \
             pulls for that long, and one made again would deliver every message again; shovel \
             needs a durable consumer without it",
            seconds(config.inactive_threshold)
        )));
    }
    let ack_wait = if config.ack_wait.is_zero() {
        DEFAULT_ACK_WAIT
    } else {
        config.ack_wait
    };
    if ack_wait < spec.shutdown_timeout {
        events.say(
            Level::Warning,
            format!(
                "consumer {c} has ack_wait {}s, shorter than the shutdown timeout ({}s): \
                 messages held while stopping may be redelivered to another replica and \
                 stored twice",
                seconds(ack_wait),
                seconds(spec.shutdown_timeout)
            ),
        );
    }
    Ok(())
}

/// A duration in seconds with `%g`, as nats-py's float seconds printed (`ns / 1e9`).
pub fn seconds(d: Duration) -> String {
    format_g(d.as_nanos() as f64 / 1e9)
}

/// The wire name of an acknowledgement policy.
fn ack_policy_name(policy: AckPolicy) -> String {
    serde_json::to_value(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{policy:?}").to_lowercase())
}

/// A refusal for an answer that cannot be read.
fn unreadable(what: &str, why: &str) -> OpenError {
    OpenError::Refused(format!(
        "cannot read the server's answer about {what}: {why}"
    ))
}

/// The consumer's state; `None` if it does not exist.
async fn consumer_info(
    api: &impl Api,
    spec: &ConsumerSpec,
) -> Result<Option<consumer::Info>, Stop> {
    let (s, c) = (&spec.stream, &spec.consumer);
    let reply = api
        .ask(format!("CONSUMER.INFO.{s}.{c}"), Bytes::new())
        .await;
    match answer(reply) {
        Answer::Found(info) => Ok(Some(info)),
        Answer::Missing => Ok(None),
        Answer::BadRequest(why) | Answer::NotNow(why) => {
            Err(Stop::NotNow(format!("cannot look up consumer {c}: {why}")))
        }
        Answer::Unreadable(why) => Err(unreadable(&format!("consumer {c}"), &why).into()),
    }
}

/// The creation request: a durable pull consumer with explicit acknowledgements, delivering
/// the stream from its first message.
pub fn create_request(spec: &ConsumerSpec) -> (String, serde_json::Value) {
    let (s, c) = (&spec.stream, &spec.consumer);
    let mut config = serde_json::json!({
        "durable_name": c,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": u64::try_from(spec.ack_wait.as_nanos()).unwrap_or(u64::MAX),
        "max_ack_pending": spec.max_ack_pending,
    });
    let mut subject = format!("CONSUMER.CREATE.{s}.{c}");
    if let Some(filter) = &spec.subject {
        config["filter_subject"] = filter.as_str().into();
        subject = format!("{subject}.{filter}");
    }
    let body = serde_json::json!({"stream_name": s, "config": config, "action": "create"});
    (subject, body)
}

/// Creates the consumer, or takes the one another replica created at the same moment.
async fn create(
    api: &impl Api,
    events: &Events,
    spec: &ConsumerSpec,
) -> Result<consumer::Info, Stop> {
    let c = &spec.consumer;
    let (subject, body) = create_request(spec);
    let reply = api.ask(subject, Bytes::from(body.to_string())).await;
    match answer(reply) {
        Answer::Found(info) => {
            events.say(
                Level::Info,
                format!(
                    "created durable pull consumer {c} on stream {} (ack_wait {}s, \
                     max_ack_pending {}, filter {})",
                    spec.stream,
                    seconds(spec.ack_wait),
                    spec.max_ack_pending,
                    spec.subject.as_deref().unwrap_or("none")
                ),
            );
            Ok(info)
        }
        Answer::BadRequest(why) => {
            // Another replica created it first, with other settings: use theirs. With none
            // there, the server refused these settings (a limit of its own, say): asking
            // again would be refused again.
            match consumer_info(api, spec).await? {
                Some(theirs) => Ok(theirs),
                None => {
                    Err(OpenError::Refused(format!("cannot create consumer {c}: {why}")).into())
                }
            }
        }
        Answer::Missing => Err(Stop::NotNow(format!(
            "cannot create consumer {c}: the server does not find stream {}",
            spec.stream
        ))),
        Answer::NotNow(why) => Err(Stop::NotNow(format!("cannot create consumer {c}: {why}"))),
        Answer::Unreadable(why) => Err(unreadable(&format!("consumer {c}"), &why).into()),
    }
}

#[cfg(test)]
mod tests {
    //! The lookups against answers made up here (the real server's answers are the fixtures
    //! and tests/nats_consumer.rs); test_nats.py's two creation tests among them.

    use super::*;

    /// A real server's answer to STREAM.INFO of stream S (subjects S.>), and to the creation
    /// of consumer c (ack_wait 40 s, max_ack_pending 4096): nats-server 2.15.1.
    const STREAM_INFO: &str = include_str!("../../tests/fixtures/nats_stream_info.json");
    const CONSUMER_INFO: &str = include_str!("../../tests/fixtures/nats_consumer_info.json");

    fn reply(body: &str) -> Result<Message, RequestError> {
        Ok(Message {
            subject: "_INBOX.test".into(),
            reply: None,
            payload: Bytes::from(body.to_string()),
            headers: None,
            status: None,
            description: None,
            length: body.len(),
        })
    }

    fn error(code: u16, description: &str) -> Result<Message, RequestError> {
        reply(&format!(
            r#"{{"type":"t","error":{{"code":{code},"err_code":1,"description":"{description}"}}}}"#
        ))
    }

    /// An API whose answers come from `answers`, by subject.
    struct Fake<F>(F);

    impl<F: Fn(&str) -> Result<Message, RequestError>> Api for Fake<F> {
        async fn ask(&self, subject: String, _: Bytes) -> Result<Message, RequestError> {
            (self.0)(&subject)
        }
    }

    /// Stream S there, consumer c missing, and its creation answered by `creation`.
    fn missing_then(
        creation: impl Fn() -> Result<Message, RequestError>,
    ) -> Fake<impl Fn(&str) -> Result<Message, RequestError>> {
        Fake(move |subject: &str| {
            if subject.starts_with("STREAM.INFO") {
                reply(STREAM_INFO)
            } else if subject.starts_with("CONSUMER.INFO") {
                error(404, "consumer not found")
            } else {
                creation()
            }
        })
    }

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            stream: "S".into(),
            consumer: "c".into(),
            subject: None,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4096,
            shutdown_timeout: Duration::from_secs(20),
            server: "nats://h:4222".into(),
            batch: 256,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn answers_are_read_as_nats_py_classified_them() {
        assert!(matches!(
            answer::<consumer::Info>(reply(CONSUMER_INFO)),
            Answer::Found(info) if info.config.max_ack_pending == 4096
        ));
        assert!(matches!(
            answer::<stream::Info>(reply(STREAM_INFO)),
            Answer::Found(info) if info.config.subjects == ["S.>"]
        ));
        assert!(matches!(
            answer::<stream::Info>(error(404, "stream not found")),
            Answer::Missing
        ));
        assert!(matches!(
            answer::<consumer::Info>(error(400, "consumer already exists")),
            Answer::BadRequest(why) if why == "consumer already exists"
        ));
        assert!(matches!(
            answer::<consumer::Info>(error(503, "JetStream system temporarily unavailable")),
            Answer::NotNow(why) if why == "JetStream system temporarily unavailable (code 503)"
        ));
        for kind in [RequestErrorKind::TimedOut, RequestErrorKind::NoResponders] {
            assert!(matches!(
                answer::<consumer::Info>(Err(RequestError::new(kind))),
                Answer::NotNow(_)
            ));
        }
        assert!(matches!(
            answer::<consumer::Info>(reply("{\"config\":")),
            Answer::Unreadable(_)
        ));
    }

    #[test]
    fn creation_that_times_out_or_gets_a_503_is_tried_again() {
        // A cluster still electing its leaders answers the creation with a timeout or a 503:
        // open() waits and tries again, it does not fail the run.
        for failure in [
            || Err(RequestError::new(RequestErrorKind::TimedOut)),
            || error(503, "JetStream system temporarily unavailable"),
        ] {
            let api = missing_then(failure);
            let events = Events::new(None);
            match run(look_up(&api, &events, &spec(), None)) {
                Err(Stop::NotNow(why)) => {
                    assert!(why.starts_with("cannot create consumer c: "), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn consumer_the_server_refuses_to_create_is_refused_with_its_words() {
        // A 400 and no consumer there: no race with another replica, nor worth waiting for.
        let api =
            missing_then(|| error(400, "consumer max ack pending exceeds system limit of 1000"));
        let events = Events::new(None);
        match run(look_up(&api, &events, &spec(), None)) {
            Err(Stop::Open(OpenError::Refused(why))) => assert_eq!(
                why,
                "cannot create consumer c: consumer max ack pending exceeds system limit of 1000"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn consumer_another_replica_created_first_is_taken() {
        // Missing at the first look, created by another replica before ours (400, other
        // settings): theirs is used.
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let api = Fake(|subject: &str| {
            if subject.starts_with("STREAM.INFO") {
                reply(STREAM_INFO)
            } else if subject.starts_with("CONSUMER.INFO") {
                if looks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    error(404, "consumer not found")
                } else {
                    reply(CONSUMER_INFO)
                }
            } else {
                error(400, "consumer already exists")
            }
        });
        let events = Events::new(None);
        let bound = run(look_up(&api, &events, &spec(), None)).expect("bound");
        assert_eq!(bound.consumer_created, "2026-12-07T07:43:28.656964Z");
        assert_eq!(bound.info.config.ack_wait, Duration::from_secs(40));
        assert!(events.take().is_empty(), "no creation said");
    }

    #[test]
    fn creation_asks_for_what_nats_py_asked() {
        let mut spec = spec();
        spec.subject = Some("S.a".into());
        spec.ack_wait = Duration::from_secs_f64(30.5);
        let (subject, body) = create_request(&spec);
        assert_eq!(subject, "CONSUMER.CREATE.S.c.S.a");
        assert_eq!(
            body,
            serde_json::json!({
                "stream_name": "S",
                "config": {
                    "durable_name": "c",
                    "deliver_policy": "all",
                    "ack_policy": "explicit",
                    "ack_wait": 30_500_000_000u64,
                    "max_ack_pending": 4096,
                    "filter_subject": "S.a",
                },
                "action": "create",
            })
        );
        assert_eq!(seconds(Duration::from_secs(3600)), "3600");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(ack_policy_name(AckPolicy::All), "all");
    }
}
