//! The reader task: pull requests on an inbox of our own, deliveries pushed to the shared
//! state for the Python side to cut into batches.
//!
//! Why a hand-rolled pull protocol, not async-nats's `consumer.fetch()`/`batch()`: those
//! subscribe a new inbox per batch and hide the statuses (a 409 "Consumer Deleted" must end
//! the run with its own message), and they keep no account of what was asked for across
//! reconnects. Here, as in the Python source: one long-lived inbox subscription; a request
//! `{"batch": n, "expires": 2 s}` to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` only
//! when the last one is answered (`requested` counts what it may still bring) and only for
//! the room this replica has (what it may hold fetched and not confirmed acknowledged, less
//! what it holds); 404/408 (no messages, expired) end a request, 409 ends it with a pause (a
//! leader change, too many waiting requests) or the run (the consumer was deleted); a request
//! with no answer for [`PULL_LOST`] past its expiry is taken as lost (a reconnect dropped it).
//! With no server connected, nothing is asked (no request piles up in the client's buffer).
//!
//! At a stop the reader asks for nothing more and unsubscribes only once the last request is
//! over (filled, expired, or lost): the server goes on filling a request whose inbox has no
//! subscriber, and what it delivers there would be neither stored nor given back, only
//! redelivered after ack_wait. (The Python source unsubscribed at once.)

use std::sync::Arc;

use async_nats::{Client, Message, StatusCode, Subscriber};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use super::core::{Shared, PULL_EXPIRES, PULL_LOST, PULL_REFUSED_PAUSE};

/// What the reader needs beyond the shared state.
#[derive(Debug)]
pub struct Reader {
    /// The client.
    pub client: Client,
    /// The inbox deliveries come to.
    pub inbox: String,
    /// Its subscription (owned here: drained here at a stop).
    pub subscription: Subscriber,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    pub pull_subject: String,
    /// Said by a stop: ask for nothing more, take what the last request brings, unsubscribe,
    /// end.
    pub drain: oneshot::Receiver<()>,
}

/// What became of a status message.
enum Status {
    /// A delivery (counts against the request).
    Delivery,
    /// The request is over: ask again.
    Over,
    /// The request was refused: ask again after a pause.
    Refused,
    /// The consumer is gone: reading ends.
    Fatal(String),
    /// Nothing to do (a heartbeat).
    Nothing,
}

/// Reads a message of the inbox.
fn status_of(message: &Message, consumer: &str) -> Status {
    if message.reply.is_some() {
        return Status::Delivery;
    }
    match message.status {
        Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => Status::Over,
        Some(StatusCode::REQUEST_TERMINATED) => {
            let said = message.description.as_deref().unwrap_or("");
            if said.to_lowercase().contains("consumer deleted") {
                Status::Fatal(format!(
                    "consumer {consumer} was deleted on the server: nothing more can be read \
                     through it, and one made again would deliver every message again"
                ))
            } else {
                Status::Refused
            }
        }
        Some(StatusCode::IDLE_HEARTBEAT) => Status::Nothing,
        // Anything else without a reply subject is no delivery, and the request is over: 503
        // (no responders: the consumer is missing or has no leader yet) and any other come
        // back at once, so the next request waits, as after a refusal (asked again at once,
        // they would loop at the speed of a round trip).
        _ => Status::Refused,
    }
}

/// Runs the reader until the stop drains it or the consumer is gone.
pub async fn run(shared: Arc<Shared>, consumer: String, mut reader: Reader) {
    let mut requested: usize = 0;
    let mut lost_at = Instant::now();
    let mut refused_until: Option<Instant> = None;
    let mut link = shared.link.watch();
    // Set by the stop: no more requests; once the last one is over, unsubscribe.
    let mut draining = false;
    // `request_open_until` is set (cleared once the request is over).
    let mut open_said = false;
    loop {
        if draining && requested == 0 {
            shared.lock().request_open_until = None;
            drain(&shared, reader.subscription).await;
            return;
        }
        let now = Instant::now();
        if refused_until.is_some_and(|t| now >= t) {
            refused_until = None;
        }
        let (room, stopping) = {
            let core = shared.lock();
            let room = shared
                .max_unacked
                .saturating_sub(core.ledger.in_flight() + core.unsorted());
            (room, core.stopping)
        };
        if requested == 0 && refused_until.is_none() && room > 0 && !draining && !stopping {
            let n = room.min(shared.batch);
            if shared.link.state().connected && pull(&reader, n).await {
                requested = n;
                let now = Instant::now();
                lost_at = now + PULL_EXPIRES + PULL_LOST;
                shared.lock().request_open_until = Some((now + PULL_EXPIRES).into_std());
                open_said = true;
            } else {
                // No server now: no request piles up in the client's buffer meanwhile.
                refused_until = Some(Instant::now() + PULL_REFUSED_PAUSE);
            }
        }
        // Everything this replica may hold is held, or the listing is full: a wait for room.
        let stall_at = shared.stall_check(requested == 0 && room == 0);
        let stall_look = async {
            match stall_at {
                Some(t) => sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let lost = async {
            if requested > 0 {
                sleep_until(lost_at).await
            } else {
                std::future::pending().await
            }
        };
        let pause_over = async {
            match refused_until {
                Some(t) => sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        if requested == 0 && open_said {
            shared.lock().request_open_until = None;
            open_said = false;
        }
        tokio::select! {
            message = reader.subscription.next() => {
                let Some(message) = message else { return };
                match status_of(&message, &consumer) {
                    Status::Delivery => {
                        requested = requested.saturating_sub(1);
                        // One wake-up per burst, not per message: a write to the wake-up
                        // socket for each delivery, and Python's reads of them, took about a
                        // quarter of the process's CPU time at 90,000 messages/s.
                        let first = shared.lock().arrive(message);
                        if first {
                            shared.python.notify();
                        }
                    }
                    Status::Over => requested = 0,
                    Status::Refused => {
                        requested = 0;
                        refused_until = Some(Instant::now() + PULL_REFUSED_PAUSE);
                    }
                    Status::Fatal(why) => {
                        shared.lock().fatal = Some(why);
                        shared.python.notify();
                        return;
                    }
                    Status::Nothing => {}
                }
            }
            () = lost => requested = 0,
            () = pause_over => {}
            () = stall_look => {}
            () = shared.room.notified() => {}
            _ = link.changed() => {}
            _ = &mut reader.drain, if !draining => draining = true,
        }
    }
}

/// Asks for `n` messages; false when it could not be sent.
async fn pull(reader: &Reader, n: usize) -> bool {
    let request = format!(r#"{{"batch":{n},"expires":{}}}"#, PULL_EXPIRES.as_nanos());
    reader
        .client
        .publish_with_reply(
            reader.pull_subject.clone(),
            reader.inbox.clone(),
            request.into(),
        )
        .await
        .is_ok()
}

/// At a stop: no more deliveries; what the last pull request still brings is kept, to be
/// given back. Ends when the subscription does (the caller bounds it in time).
async fn drain(shared: &Shared, mut subscription: Subscriber) {
    if subscription.drain().await.is_err() {
        return;
    }
    while let Some(message) = subscription.next().await {
        if message.reply.is_some() {
            // The stop sorts what arrived itself (finish.rs): no wake-up.
            let _ = shared.lock().arrive(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, description: &str) -> Message {
        Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: None,
            status: StatusCode::from_u16(code).ok(),
            description: Some(description.into()),
            length: 0,
        }
    }

    #[test]
    fn statuses_end_pause_or_stop_reading() {
        assert!(matches!(
            status_of(&status(404, "No Messages"), "c"),
            Status::Over
        ));
        assert!(matches!(
            status_of(&status(408, "Request Timeout"), "c"),
            Status::Over
        ));
        assert!(matches!(
            status_of(&status(409, "Exceeded MaxWaiting"), "c"),
            Status::Refused
        ));
        assert!(matches!(
            status_of(&status(409, "Leadership Change"), "c"),
            Status::Refused
        ));
        match status_of(&status(409, "Consumer Deleted"), "c") {
            Status::Fatal(why) => assert_eq!(
                why,
                "consumer c was deleted on the server: nothing more can be read through it, and \
                 one made again would deliver every message again"
            ),
            _ => panic!("not fatal"),
        }
        assert!(matches!(
            status_of(&status(100, "Idle Heartbeat"), "c"),
            Status::Nothing
        ));
        assert!(matches!(status_of(&status(503, ""), "c"), Status::Refused));
        let mut delivery = status(0, "");
        delivery.status = None;
        delivery.reply = Some("$JS.ACK.S.c.1.1.1.1.0".into());
        assert!(matches!(status_of(&delivery, "c"), Status::Delivery));
    }
}
