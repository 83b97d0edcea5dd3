//! Acknowledgement after durability: the acknowledging task and the confirmations.
//!
//! Once storage says a batch is durable (its checkpoint on disk), each of its messages is
//! acknowledged (`+ACK` to the delivery's reply subject, with `<ack inbox>.<seq>` as the
//! reply) and the server's confirmation awaited: an empty message on the acknowledgement
//! inbox. A message with a status there (503: no responders, while the consumer has no
//! leader) confirms nothing: the acknowledgement was not applied, and it is sent again after
//! [`ACK_RESEND`]. Acknowledgements go out only while connected (the ledger keeps what is
//! due until then), and the lock is never held while sending.
//!
//! Every [`CONSUMER_INFO`] (sooner while the reader waits for the listing to shrink) the
//! consumer's state is asked for: its pending counts for the metrics, and its
//! acknowledgement floor, below which the ledger's entries are known acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

use super::consumer::{answer, Answer};
use super::core::{
    Shared, Stats, ACK_RESEND, CONSUMER_INFO, LISTING_FULL_LOOK, MISSING_WARN_AFTER,
    RESTORED_MARGIN,
};
use super::events::Level;

/// What the acknowledging task needs beyond the shared state.
#[derive(Debug, Clone)]
pub struct Acker {
    /// The client.
    pub client: Client,
    /// The acknowledgement inbox; an acknowledgement's reply is `<ack_inbox>.<seq>`.
    pub ack_inbox: String,
    /// The stream's name.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
}

/// Sends the acknowledgements that are due: of batches made durable, of redeliveries of
/// messages stored here, and again of those not confirmed within [`ACK_RESEND`]. Only while
/// connected.
pub async fn send_acks(shared: &Shared, acker: &Acker) {
    let due = {
        let mut core = shared.lock();
        let durable = core.records_durable;
        core.ledger.made_durable(durable);
        if !shared.link.state().connected {
            return;
        }
        // (An instant 2 s before the clock's start does not exist: resent, then.)
        let now = Instant::now();
        core.ledger
            .unconfirmed(now.checked_sub(ACK_RESEND).unwrap_or(now))
    };
    for (seq, reply) in due {
        let sent = acker
            .client
            .publish_with_reply(
                reply,
                format!("{}.{seq}", acker.ack_inbox),
                Bytes::from_static(b"+ACK"),
            )
            .await;
        if sent.is_ok() {
            shared.lock().ledger.ack_sent(seq, Instant::now());
        }
    }
}

/// Asks for the consumer's state: pending counts, and the floor below which the ledger's
/// entries are known acknowledged. Returns how many looks in a row found it missing.
async fn look_at_consumer(shared: &Shared, acker: &Acker, missing: u32) -> u32 {
    if !shared.link.state().connected {
        return missing;
    }
    let subject = format!("$JS.API.CONSUMER.INFO.{}.{}", acker.stream, acker.consumer);
    let request = async_nats::Request::new().timeout(Some(CONSUMER_INFO));
    let info: consumer::Info = match answer(acker.client.send_request(subject, request).await) {
        Answer::Found(info) => info,
        Answer::Missing => {
            if missing + 1 == MISSING_WARN_AFTER {
                shared.link.events().say(
                    Level::Warning,
                    format!(
                        "NATS: the server says consumer {} of stream {} does not exist: \
                         nothing more is delivered (deleted? shovel refuses to start on it \
                         again, since one made again would deliver every message again)",
                        acker.consumer, acker.stream
                    ),
                );
            }
            return missing + 1;
        }
        Answer::BadRequest(why) | Answer::NotNow(why) | Answer::Unreadable(why) => {
            shared
                .link
                .events()
                .say(Level::Debug, format!("NATS: consumer info: {why}"));
            return missing;
        }
    };
    let stats = &shared.stats;
    stats.consumer(&info);
    let (dropped, acknowledged) = shared
        .lock()
        .ledger
        .below_floor(info.ack_floor.stream_sequence);
    for ack in &acknowledged {
        stats.acknowledged(ack.fetched_at);
    }
    if dropped > 0 {
        shared.room_made();
    }
    0
}

/// Once ack_wait has passed since the consumer was bound (connected all along): the
/// restored entries not delivered again leave the ledger.
fn drop_restored(shared: &Shared) {
    if !shared.link.state().connected {
        return;
    }
    let gone = {
        let mut core = shared.lock();
        if core.ledger.restored() == 0 || core.restored_until.is_none_or(|t| Instant::now() < t) {
            return;
        }
        core.ledger.drop_restored()
    };
    shared.link.events().say(
        Level::Info,
        format!(
            "NATS: {gone} messages stored before this start were not delivered again within \
             ack_wait: no longer listed (the server holds them acknowledged, or another \
             replica stored them)"
        ),
    );
    shared.room_made();
}

/// The acknowledging task: runs until its runtime stops or the stop aborts it.
pub async fn run(shared: Arc<Shared>, acker: Acker) {
    let mut last_look: Option<Instant> = None;
    let mut missing = 0;
    let mut connects = shared.link.state().connects;
    let mut link = shared.link.watch();
    loop {
        let now_connects = shared.link.state().connects;
        if now_connects != connects {
            // Reconnected: no pull reached the server meanwhile, so what it would have
            // delivered again comes now; the restored entries stay listed that much longer.
            connects = now_connects;
            let mut core = shared.lock();
            let later = Instant::now() + RESTORED_MARGIN;
            core.restored_until = core.restored_until.map(|t| t.max(later));
        }
        send_acks(&shared, &acker).await;
        let listing_full = shared.lock().listing_full;
        let since = last_look.map_or(Duration::MAX, |t| t.elapsed());
        if since >= CONSUMER_INFO || (listing_full && since >= LISTING_FULL_LOOK) {
            last_look = Some(Instant::now());
            shared.lock().listing_full = false;
            missing = look_at_consumer(&shared, &acker, missing).await;
            drop_restored(&shared);
        }
        // Woken by storage's progress, a redelivery to acknowledge, or a reconnect (the
        // acknowledgements not confirmed go out again at once).
        let _ = tokio::time::timeout(ACK_RESEND / 2, async {
            tokio::select! {
                () = shared.durable.notified() => {}
                _ = link.changed() => {}
            }
        })
        .await;
    }
}

/// What a message on the acknowledgement inbox says.
#[derive(Debug, PartialEq, Eq)]
enum Inbox {
    /// The acknowledgement of this sequence was applied.
    Confirmed(u64),
    /// A status in its place (see the module doc): nothing confirmed, sent again later.
    NotApplied(u64, String),
    /// Not about one of our acknowledgements.
    Other,
}

/// Reads a message of the acknowledgement inbox (`<ack inbox>.<seq>`).
fn inbox_answer(message: &Message) -> Inbox {
    let Some(seq) = message
        .subject
        .rsplit_once('.')
        .and_then(|(_, tail)| tail.parse::<u64>().ok())
    else {
        return Inbox::Other;
    };
    let header_status = message.headers.as_ref().and_then(|h| h.get("Status"));
    match (&message.status, header_status) {
        (None, None) => Inbox::Confirmed(seq),
        (Some(status), _) => Inbox::NotApplied(seq, format!("{status:?}")),
        (None, Some(status)) => Inbox::NotApplied(seq, status.to_string()),
    }
}

/// The confirmations task: reads the acknowledgement inbox until its subscription ends.
pub async fn run_confirmations(shared: Arc<Shared>, mut subscription: Subscriber) {
    while let Some(message) = subscription.next().await {
        let seq = match inbox_answer(&message) {
            Inbox::Confirmed(seq) => seq,
            Inbox::NotApplied(seq, status) => {
                shared.link.events().say(
                    Level::Debug,
                    format!("NATS: acknowledgement of {seq} not applied: {status}"),
                );
                continue;
            }
            Inbox::Other => continue,
        };
        let news = shared.lock().ledger.confirmed(seq);
        if let Some(ack) = news {
            shared.stats.acknowledged(ack.fetched_at);
            shared.room_made();
        }
        shared.confirmations.notify_one();
    }
}

/// Counts a negative acknowledgement sent.
pub(crate) fn nacked(stats: &Stats) {
    Stats::add(&stats.nacked, 1);
}

#[cfg(test)]
mod tests {
    use async_nats::{HeaderMap, Message, StatusCode};
    use bytes::Bytes;

    use super::{inbox_answer, Inbox};

    fn on_inbox(subject: &str, status: Option<StatusCode>, headers: Option<HeaderMap>) -> Message {
        Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::new(),
            headers,
            status,
            description: None,
            length: 0,
        }
    }

    /// A status the server sends in place of a confirmation (a 503, no responders, while the
    /// consumer has no leader) confirms nothing. Taken as a confirmation, it let a stop record
    /// the message as confirmed; the consumer's next leader delivered it again once the ledger
    /// had let it go, and it was stored twice in one output directory (seen with a cluster
    /// whose consumer leader's server was killed). Was tests/unit/sources/test_nats_acks.py.
    #[test]
    fn a_status_on_the_ack_inbox_is_no_confirmation() {
        let inbox = "_INBOX.ackbox";
        assert_eq!(
            inbox_answer(&on_inbox(&format!("{inbox}.4583"), None, None)),
            Inbox::Confirmed(4583)
        );
        let no_responders = on_inbox(
            &format!("{inbox}.4586"),
            Some(StatusCode::NO_RESPONDERS),
            None,
        );
        assert!(matches!(
            inbox_answer(&no_responders),
            Inbox::NotApplied(4586, _)
        ));
        // As nats-py handed it over: a Status header, no status line read.
        let mut headers = HeaderMap::new();
        headers.insert("Status", "503");
        headers.insert("Nats-Subject", "$JS.ACK.ORDERS.shovel.1.4586.4586.1.0");
        assert_eq!(
            inbox_answer(&on_inbox(&format!("{inbox}.4586"), None, Some(headers))),
            Inbox::NotApplied(4586, "503".to_owned())
        );
        assert_eq!(inbox_answer(&on_inbox(inbox, None, None)), Inbox::Other);
    }
}
