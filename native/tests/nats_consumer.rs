//! Opening the NATS source against a real server: connection attempts and their lines, the
//! consumer's creation, the refusals and the checks against the checkpoint (the meaning of
//! tests/process/test_nats_source.py's refusal tests, at the native layer).
//!
//! Each test starts its own nats-server (see support/mod.rs: skipped without NATS_SERVER).
// Helpers here are test code too: a failed setup should panic loudly.
#![allow(clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shovel_native::nats::connect::{Link, NatsConfig, OpenError};
use shovel_native::nats::consumer::{self, Bound, ConsumerSpec, Restored};
use shovel_native::nats::events::{Events, Level};
use support::NatsServer;

/// Long enough for any start here; a test that hangs fails instead.
const OPEN_LIMIT: Duration = Duration::from_secs(15);

fn config(urls: &[String], timeout: Duration) -> NatsConfig {
    NatsConfig {
        servers: urls.to_vec(),
        connect_timeout: Some(timeout),
        ..NatsConfig::default()
    }
}

/// Consumer `consumer` of stream S, as the messages name `server`.
fn spec_on(server: String, consumer: &str) -> ConsumerSpec {
    ConsumerSpec {
        stream: "S".into(),
        consumer: consumer.into(),
        subject: None,
        ack_wait: Duration::from_secs(40),
        max_ack_pending: 4096,
        shutdown_timeout: Duration::from_secs(20),
        server,
        batch: 256,
    }
}

fn spec(server: &NatsServer, consumer: &str) -> ConsumerSpec {
    spec_on(server.url(), consumer)
}

/// A JetStream server (with `config`) holding stream S, a client of it, and the source's
/// settings for it; `None` without a server binary.
async fn with_stream(
    config: &str,
    jetstream: &str,
) -> Option<(NatsServer, async_nats::Client, NatsConfig)> {
    let server = NatsServer::start_on(support::free_port(), config, Some(jetstream))?;
    let admin = admin(&server).await;
    make_stream(&admin).await;
    let settings = self::config(&[server.url()], OPEN_LIMIT);
    Some((server, admin, settings))
}

/// Opens (connect and bind) as the source does; returns what came of it and the lines said.
async fn open(
    config: &NatsConfig,
    spec: &ConsumerSpec,
    restored: Option<&Restored>,
) -> (Result<Bound, OpenError>, Vec<(Level, String)>) {
    let link = Link::new(Arc::new(Events::new(None)));
    let result = consumer::open(config, spec, restored, &link).await;
    let bound = result.map(|(client, bound)| {
        drop(client);
        bound
    });
    (bound, link.events().take())
}

/// A plain client, for setting the server up.
async fn admin(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .expect("admin client")
}

/// A JetStream API call; its answer.
async fn api(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let reply = client
        .request(format!("$JS.API.{subject}"), body.to_string().into())
        .await
        .expect("API answer");
    serde_json::from_slice(&reply.payload).expect("JSON answer")
}

/// Stream S on subjects S.>.
async fn make_stream(client: &async_nats::Client) {
    let answer = api(
        client,
        "STREAM.CREATE.S",
        json!({"name": "S", "subjects": ["S.>"], "storage": "file"}),
    )
    .await;
    assert!(answer.get("error").is_none(), "{answer}");
}

/// A durable consumer `name` on S with `config` (durable_name added).
async fn make_consumer(client: &async_nats::Client, name: &str, mut config: Value) -> Value {
    config["durable_name"] = name.into();
    let answer = api(
        client,
        &format!("CONSUMER.CREATE.S.{name}"),
        json!({"stream_name": "S", "config": config}),
    )
    .await;
    assert!(answer.get("error").is_none(), "{answer}");
    answer
}

fn refused(result: Result<Bound, OpenError>) -> String {
    match result {
        Err(OpenError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn mismatch(result: Result<Bound, OpenError>) -> String {
    match result {
        Err(OpenError::Mismatch(why)) => why,
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn creates_the_consumer_then_binds_it_again() {
    let Some((server, admin, config)) = with_stream("", "").await else {
        return;
    };
    let spec = spec(&server, "c");

    let (bound, lines) = open(&config, &spec, None).await;
    let bound = bound.expect("bound");
    let c = &bound.info.config;
    assert_eq!(c.durable_name.as_deref(), Some("c"));
    assert_eq!(
        c.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!(
        c.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::All
    );
    assert_eq!(c.ack_wait, Duration::from_secs(40));
    assert_eq!(c.max_ack_pending, 4096);
    assert_eq!(
        lines,
        vec![(
            Level::Info,
            "created durable pull consumer c on stream S (ack_wait 40s, max_ack_pending 4096, \
             filter none)"
                .to_string()
        )]
    );
    let stream = api(&admin, "STREAM.INFO.S", json!({})).await;
    let created = stream["created"].as_str().expect("created");
    // The server's nanoseconds, cut to microseconds.
    assert_eq!(&bound.stream_created[..26], &created[..26]);
    assert!(bound.stream_created.ends_with('Z') && bound.stream_created.len() == 27);

    // Bound again, as a restart with this checkpoint: nothing created, nothing said.
    let restored = Restored {
        created: bound.stream_created.clone(),
        consumer_created: bound.consumer_created.clone(),
    };
    let (again, lines) = open(&config, &spec, Some(&restored)).await;
    let again = again.expect("bound again");
    assert_eq!(again.consumer_created, bound.consumer_created);
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn two_replicas_creating_the_consumer_at_once_bind_the_same_one() {
    let Some((server, _admin, config)) = with_stream("", "").await else {
        return;
    };
    let one = spec(&server, "c");
    // Other settings: whichever comes second is refused the creation and takes the first's.
    let mut other = one.clone();
    other.max_ack_pending = 999;
    let ((a, _), (b, _)) = tokio::join!(open(&config, &one, None), open(&config, &other, None));
    let (a, b) = (a.expect("first bound"), b.expect("second bound"));
    assert_eq!(a.consumer_created, b.consumer_created);
    assert_eq!(a.info.config.max_ack_pending, b.info.config.max_ack_pending);
}

#[tokio::test]
async fn consumers_that_could_lose_messages_are_refused() {
    let Some((server, admin, config)) = with_stream("", "").await else {
        return;
    };
    let explicit = json!({"ack_policy": "explicit"});
    let mut cases = vec![
        (
            "md",
            json!({"ack_policy": "explicit", "max_deliver": 5}),
            "consumer md has max_deliver 5: a message delivered that many times",
        ),
        (
            "it",
            json!({"ack_policy": "explicit", "inactive_threshold": 3_600_000_000_000u64}),
            "consumer it has inactive_threshold 3600s: the server deletes it",
        ),
        (
            "all",
            json!({"ack_policy": "all"}),
            "consumer all acknowledges with policy all; shovel needs explicit",
        ),
        (
            "push",
            json!({"ack_policy": "explicit", "deliver_subject": "somewhere"}),
            "consumer push is a push consumer; shovel needs a pull consumer",
        ),
        (
            "mb",
            json!({"ack_policy": "explicit", "max_batch": 100}),
            "consumer mb has max_batch 100, below batch=256: the server would turn down every \
             pull request; give batch=100 or less",
        ),
        (
            "me",
            json!({"ack_policy": "explicit", "max_expires": 1_000_000_000u64}),
            "consumer me has max_expires 1s, below the 2s each pull request of shovel's waits",
        ),
    ];
    cases.push((
        "fa",
        json!({"ack_policy": "explicit", "filter_subject": "S.a"}),
        "consumer fa filters ['S.a'], not S.b: drop subject= or use another consumer name",
    ));
    for (name, settings, reason) in cases {
        make_consumer(&admin, name, settings).await;
        let mut spec = spec(&server, name);
        if name == "fa" {
            spec.subject = Some("S.b".into());
        }
        let why = refused(open(&config, &spec, None).await.0);
        assert!(why.starts_with(reason), "{name}: {why}");
    }
    // A consumer without a filter when subject= asks for one.
    make_consumer(&admin, "nf", explicit).await;
    let mut nf = spec(&server, "nf");
    nf.subject = Some("S.b".into());
    let why = refused(open(&config, &nf, None).await.0);
    assert!(
        why.starts_with("consumer nf filters no subject, not S.b"),
        "{why}"
    );
}

#[tokio::test]
async fn a_missing_stream_or_a_filter_outside_it_is_refused() {
    let Some((server, _admin, config)) = with_stream("", "").await else {
        return;
    };
    let mut nope = spec(&server, "c");
    nope.stream = "NOPE".into();
    assert_eq!(
        refused(open(&config, &nope, None).await.0),
        format!("stream NOPE does not exist on {}", server.url())
    );
    let mut other = spec(&server, "c");
    other.subject = Some("OTHER.x".into());
    assert_eq!(
        refused(open(&config, &other, None).await.0),
        "subject filter OTHER.x matches none of stream S's subjects (S.>): nothing would ever \
         be delivered"
    );
}

#[tokio::test]
async fn the_server_refusing_the_creation_is_refused_with_its_words() {
    let Some((server, _admin, config)) = with_stream("", "limits { max_ack_pending: 1000 }").await
    else {
        return;
    };
    let why = refused(open(&config, &spec(&server, "c"), None).await.0);
    assert!(why.starts_with("cannot create consumer c: "), "{why}");
    assert!(why.contains("1000"), "{why}");
}

#[tokio::test]
async fn a_stream_or_consumer_made_again_is_a_mismatch() {
    let Some((server, admin, config)) = with_stream("", "").await else {
        return;
    };
    let spec = spec(&server, "c");
    let bound = open(&config, &spec, None).await.0.expect("bound");

    let older = Restored {
        created: "2020-01-01T00:00:00.000000Z".into(),
        consumer_created: bound.consumer_created.clone(),
    };
    let why = mismatch(open(&config, &spec, Some(&older)).await.0);
    assert!(
        why.starts_with(&format!(
            "stream S was created at {}, but this output directory holds records of a stream \
             of that name created at 2020-01-01T00:00:00.000000Z: it was deleted and made again",
            bound.stream_created
        )),
        "{why}"
    );

    let other_consumer = Restored {
        created: bound.stream_created.clone(),
        consumer_created: "2020-01-01T00:00:00.000000Z".into(),
    };
    let why = mismatch(open(&config, &spec, Some(&other_consumer)).await.0);
    assert!(
        why.contains("it was deleted and made again, and delivers the stream from its first"),
        "{why}"
    );

    // Gone: refused, and not made again.
    let deleted = api(&admin, "CONSUMER.DELETE.S.c", json!({})).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    let restored = Restored {
        created: bound.stream_created.clone(),
        consumer_created: bound.consumer_created.clone(),
    };
    let why = mismatch(open(&config, &spec, Some(&restored)).await.0);
    assert!(
        why.starts_with("consumer c no longer exists on stream S, but this output directory"),
        "{why}"
    );
    let info = api(&admin, "CONSUMER.INFO.S.c", json!({})).await;
    assert_eq!(info["error"]["code"], 404, "made again: {info}");
}

#[tokio::test]
async fn a_wrong_password_is_an_error_line_at_each_attempt_until_the_timeout() {
    let Some(server) =
        NatsServer::start("authorization { user: shovel, password: \"right-secret\" }")
    else {
        return;
    };
    let wrong = format!("nats://shovel:wrong-secret@{}", server.host_port());
    let started = std::time::Instant::now();
    let (result, lines) = open(
        &config(&[wrong], Duration::from_secs(3)),
        &spec(&server, "c"),
        None,
    )
    .await;
    let refusal = format!(
        "{} refused the connection: Authorization Violation",
        server.host_port()
    );
    assert_eq!(
        result.err(),
        Some(OpenError::Unavailable(format!(
            "no NATS server accepted the connection within 3s: {refusal}"
        )))
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    let errors: Vec<_> = lines.iter().filter(|(l, _)| *l == Level::Error).collect();
    assert!(errors.len() >= 2, "one line per attempt: {lines:?}");
    for (_, text) in &errors {
        assert_eq!(*text, format!("NATS: {refusal}"));
    }
    assert!(
        lines.iter().all(|(_, text)| !text.contains("secret")),
        "{lines:?}"
    );

    // The right one, from the URL's user information.
    let right = format!("nats://shovel:right-secret@{}", server.host_port());
    make_stream(
        &async_nats::ConnectOptions::new()
            .user_and_password("shovel".into(), "right-secret".into())
            .connect(server.url())
            .await
            .expect("admin"),
    )
    .await;
    let (bound, _) = open(&config(&[right], OPEN_LIMIT), &spec(&server, "c"), None).await;
    bound.expect("bound with the right password");
}

#[tokio::test]
async fn a_token_in_the_url_signs_in() {
    let Some(server) = NatsServer::start("authorization { token: \"t0ken\" }") else {
        return;
    };
    make_stream(
        &async_nats::ConnectOptions::new()
            .token("t0ken".into())
            .connect(server.url())
            .await
            .expect("admin"),
    )
    .await;
    let url = format!("nats://t0ken@{}", server.host_port());
    let (bound, _) = open(&config(&[url], OPEN_LIMIT), &spec(&server, "c"), None).await;
    bound.expect("bound with the token");
}

#[tokio::test]
async fn no_server_is_a_warning_at_each_attempt_until_the_timeout() {
    if support::binary().is_none() {
        return;
    }
    let port = support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let spec = spec_on(url.clone(), "c");
    let (result, lines) = open(&config(&[url], Duration::from_millis(2500)), &spec, None).await;
    let why = match result {
        Err(OpenError::Unavailable(why)) => why,
        other => panic!("{other:?}"),
    };
    assert!(
        why.starts_with(&format!(
            "no NATS server accepted the connection within 2.5s: cannot connect to 127.0.0.1:{port}: "
        )),
        "{why}"
    );
    let warnings: Vec<_> = lines
        .iter()
        .filter(|(level, text)| {
            *level == Level::Warning
                && text.starts_with(&format!("NATS: cannot connect to 127.0.0.1:{port}: "))
                && text.contains("refused")
        })
        .collect();
    assert!(warnings.len() >= 2, "one line per attempt: {lines:?}");
}

#[tokio::test]
async fn a_server_without_jetstream_is_waited_for_until_the_timeout() {
    let Some(server) = NatsServer::start_on(support::free_port(), "", None) else {
        return;
    };
    let (result, lines) = open(
        &config(&[server.url()], Duration::from_millis(2500)),
        &spec(&server, "c"),
        None,
    )
    .await;
    let why = match result {
        Err(OpenError::Unavailable(why)) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        why,
        "the NATS servers did not answer within 2.5s: cannot look up stream S: no responders \
         (JetStream not enabled, or no leader yet)"
    );
    assert!(
        lines.iter().any(|(level, text)| *level == Level::Warning
            && text
                == "NATS: cannot look up stream S: no responders (JetStream not enabled, or no \
                    leader yet); trying again in 1s"),
        "{lines:?}"
    );
}
