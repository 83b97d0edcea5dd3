//! The NATS source's shared state: what the reader, the acknowledging tasks, the stop and the
//! Python side (through [`super::source::Source`]) all look at, under one `std::sync::Mutex`
//! that is never held across an `.await` (a task takes what it needs, lets go, then sends).
//!
//! Deliveries go: the reader pushes them to `arrived` as they come; the Python side's
//! `take_batch` sorts them ([`Core::take_arrived`]: new ones are held, redeliveries of
//! messages stored here are acknowledged or dropped) and cuts a batch of the held ones that
//! the checkpoint's listing has room for ([`Core::batch`]), which the ledger then holds as
//! pending until storage makes it durable.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::Message;
use tokio::sync::Notify;

use super::connect::Link;
use super::descriptor::NatsDescriptor;
use super::events::Level;
use super::ledger::Ledger;
use super::record::{msg_id, Record};
use super::text::parse_reply;
use crate::notify::Notifier;

/// A pull request waits this long on the server for messages; a new one follows.
pub const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// A pull request that has had no answer for this long past its expiry is taken as lost (a
/// reconnect, a server that went away).
pub const PULL_LOST: Duration = Duration::from_secs(1);
/// After the server turned a pull request down (409), or with no server connected, the next
/// one waits this long.
pub const PULL_REFUSED_PAUSE: Duration = Duration::from_millis(500);
/// An acknowledgement not confirmed within this long is sent again.
pub const ACK_RESEND: Duration = Duration::from_secs(2);
/// How often the consumer's state is asked for (pending messages, acknowledgement floor);
/// and how often while the reader waits for the floor to shorten the checkpoint's listing.
pub const CONSUMER_INFO: Duration = Duration::from_secs(1);
/// See [`CONSUMER_INFO`].
pub const LISTING_FULL_LOOK: Duration = Duration::from_millis(500);
/// The ledger's listing in the checkpoint's source descriptor is at most this long, so that a
/// checkpoint, written at every commit, stays small.
pub const LISTING_MAX_CHARS: usize = 3000;
/// The consumer is said missing after this many looks in a row found it so.
pub const MISSING_WARN_AFTER: u32 = 3;
/// The restored entries not delivered again leave the ledger once the consumer's ack_wait
/// has passed since it was bound, and this much more (see source.py's RESTORED_MARGIN_S).
pub const RESTORED_MARGIN: Duration =
    Duration::from_secs(PULL_EXPIRES.as_secs() + PULL_LOST.as_secs() + CONSUMER_INFO.as_secs());

/// A reader that has waited this long for room (to pull, or to hand over what it fetched)
/// says so, with the cause.
pub const STALL_WARN: Duration = Duration::from_secs(5);
/// The upper bounds of the acknowledgement latency histogram's buckets, in seconds (must
/// match `ack_latency_histogram` in shovel/sources/nats/metrics.py); one more bucket, +Inf.
pub const ACK_LATENCY_BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters for the metrics, read at scrape time from any thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// Deliveries taken (new or not).
    pub fetched: AtomicU64,
    /// Deliveries the server holds acknowledged (confirmed, or passed by the floor).
    pub acked: AtomicU64,
    /// Deliveries that were not the first of their message.
    pub redelivered: AtomicU64,
    /// Deliveries of messages already stored (or being stored) here: not stored again.
    pub skipped: AtomicU64,
    /// Negative acknowledgements sent (messages given back at a stop).
    pub nacked: AtomicU64,
    /// The consumer's pending messages at the last look.
    pub consumer_pending: AtomicU64,
    /// The consumer's delivered-unacknowledged messages at the last look.
    pub consumer_ack_pending: AtomicU64,
    /// Sum of the acknowledged deliveries' latencies (fetch to acknowledged), nanoseconds.
    pub ack_latency_ns: AtomicU64,
    /// How many latencies the sum holds.
    pub ack_latency_count: AtomicU64,
    /// Latencies by bucket (not cumulative): one per bound of [`ACK_LATENCY_BOUNDS`], then
    /// +Inf.
    ack_latency_buckets: [AtomicU64; ACK_LATENCY_BOUNDS.len() + 1],
    /// Waits for room long enough to be said.
    pub stalls: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The consumer's state as the server gave it.
    pub fn consumer(&self, info: &async_nats::jetstream::consumer::Info) {
        self.consumer_pending
            .store(info.num_pending, Ordering::Relaxed);
        self.consumer_ack_pending
            .store(info.num_ack_pending as u64, Ordering::Relaxed);
    }

    /// A delivery the server holds acknowledged, fetched at `fetched_at` (if known).
    pub fn acknowledged(&self, fetched_at: Option<Instant>) {
        Self::add(&self.acked, 1);
        if let Some(at) = fetched_at {
            let latency = at.elapsed();
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            Self::add(&self.ack_latency_ns, ns);
            Self::add(&self.ack_latency_count, 1);
            let bucket = ACK_LATENCY_BOUNDS
                .iter()
                .position(|&bound| latency.as_secs_f64() <= bound)
                .unwrap_or(ACK_LATENCY_BOUNDS.len());
            Self::add(&self.ack_latency_buckets[bucket], 1);
        }
    }

    /// The latency histogram's cumulative bucket counts (Prometheus's `le` buckets, the
    /// last one +Inf).
    pub fn ack_latency_buckets(&self) -> [u64; ACK_LATENCY_BOUNDS.len() + 1] {
        let mut total = 0;
        std::array::from_fn(|i| {
            total += self.ack_latency_buckets[i].load(Ordering::Relaxed);
            total
        })
    }
}

/// A message fetched, new here, not yet handed over.
#[derive(Debug)]
struct Held {
    /// Its stream sequence.
    seq: u64,
    /// The delivery (subject, payload, headers, reply subject).
    message: Message,
    /// When it arrived.
    at: Instant,
}

/// A batch of stored records for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The records' lines, one per message, by sequence.
    pub data: Vec<u8>,
    /// How many records.
    pub records: usize,
    /// The committed offset once it is stored: the highest stream sequence stored here.
    pub end_offset: u64,
    /// The checkpoint's source descriptor once it is stored.
    pub descriptor: String,
}

/// What the names of the checkpoint descriptor are.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub consumer: String,
    /// When the stream was created (set when bound).
    pub created: String,
    /// When the consumer was created (set when bound).
    pub consumer_created: String,
}

/// The state under the lock. Each field says who changes it.
#[derive(Debug, Default)]
pub struct Core {
    /// Every stored sequence a delivery may bring again: the reader's sort and batches, the
    /// acknowledging tasks and the stop all change it.
    pub ledger: Ledger,
    /// Deliveries pushed by the reader, not yet sorted (with when they arrived).
    arrived: VecDeque<(Message, Instant)>,
    /// New messages taken from `arrived`, not yet handed over.
    held: Vec<Held>,
    /// Their sequences.
    held_seqs: HashSet<u64>,
    /// The highest stream sequence handed over (or committed before this run).
    pub offset: u64,
    /// Names for the descriptor.
    pub names: Names,
    /// The reader waits for the checkpoint's listing to shrink (the acknowledging task then
    /// looks at the consumer sooner).
    pub listing_full: bool,
    /// Records of this run that storage made durable (Python says so).
    pub records_durable: u64,
    /// Why reading cannot go on (the consumer was deleted), once the reader saw it.
    pub fatal: Option<String>,
    /// When the restored entries not delivered again leave the ledger (`None`: not yet
    /// bound).
    pub restored_until: Option<Instant>,
    /// Messages are held that the checkpoint's listing has no room for (set and cleared by
    /// the batch cutting; the reader times the wait).
    pub listing_wait: bool,
    /// When the reader began to wait for room (`None`: it does not wait).
    pub stall_started: Option<Instant>,
    /// The wait was said (a WARNING): its end is said too.
    pub stall_said: bool,
    /// Until when the reader's last pull request may still take deliveries (set by the
    /// reader; `None`: no request open). A stop gives back with a delay that outlasts it.
    pub request_open_until: Option<Instant>,
    /// The run is stopping (the tail was taken, or the stop began): the reader asks for
    /// nothing more, so that no request opens after what is given back.
    pub stopping: bool,
}

impl Core {
    /// Messages held or arrived (statuses aside): what the reader counts against its room.
    pub fn unsorted(&self) -> usize {
        self.held.len()
            + self
                .arrived
                .iter()
                .filter(|(m, _)| m.reply.is_some())
                .count()
    }

    /// A delivery (or a status of a pull request) came. Returns whether it is the first one
    /// since the Python side last took what arrived: only then does Python need a wake-up.
    /// Any later one finds that wake-up still due, and Python's next `take_batch` takes them
    /// all (it takes everything that arrived, under this lock).
    pub fn arrive(&mut self, message: Message) -> bool {
        let first = self.arrived.is_empty();
        self.arrived.push_back((message, Instant::now()));
        first
    }

    /// Sorts what arrived: new messages are held, redeliveries of messages stored here are
    /// acknowledged (once durable: returns true, to wake the acknowledging task) or dropped
    /// (still being stored).
    pub fn take_arrived(&mut self, stats: &Stats) -> bool {
        let mut ack_due = false;
        while let Some((message, at)) = self.arrived.pop_front() {
            let Some(reply) = message.reply.as_deref() else {
                // A status of a pull request (no messages, expired, refused): not a message.
                continue;
            };
            let Some(delivery) = parse_reply(reply) else {
                // Not a JetStream delivery: nothing to store, nothing to acknowledge.
                continue;
            };
            let seq = delivery.stream_seq;
            Stats::add(&stats.fetched, 1);
            if delivery.delivered > 1 {
                Stats::add(&stats.redelivered, 1);
            }
            if let Some(entry) = self.ledger.known(seq, reply) {
                Stats::add(&stats.skipped, 1);
                ack_due |= entry.durable;
                continue;
            }
            if self.ledger.readmit(seq, reply).is_some() {
                // Stored here, its entry gone: the server forgot its acknowledgement.
                Stats::add(&stats.skipped, 1);
                ack_due = true;
                continue;
            }
            if !self.held_seqs.insert(seq) {
                continue;
            }
            self.held.push(Held { seq, message, at });
        }
        ack_due
    }

    /// Whether messages are held, not yet handed over.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    /// A batch of the held messages, as many as the checkpoint's listing has room for (half
    /// as many, again, until they fit); `None` when none fits or none is held.
    pub fn batch(&mut self) -> Option<Batch> {
        let mut n = self.held.len();
        while n > 0
            && !self
                .ledger
                .fits(self.held[..n].iter().map(|h| h.seq), LISTING_MAX_CHARS)
        {
            n /= 2;
        }
        if n == 0 {
            return None;
        }
        let mut taken: Vec<Held> = self.held.drain(..n).collect();
        for h in &taken {
            self.held_seqs.remove(&h.seq);
        }
        taken.sort_by_key(|h| h.seq);
        let records: Vec<Record<'_>> = taken
            .iter()
            .map(|h| Record {
                seq: h.seq,
                subject: h.message.subject.as_str(),
                id: msg_id(h.message.headers.as_ref()),
                data: &h.message.payload,
            })
            .collect();
        let mut data = Vec::with_capacity(records.iter().map(Record::line_len).sum());
        for record in &records {
            record.push_to(&mut data);
        }
        let handed = taken
            .iter()
            .map(|h| {
                let reply = h.message.reply.as_deref().unwrap_or_default().to_string();
                (h.seq, reply, h.at)
            })
            .collect();
        let listing = self.ledger.hand_over(handed, LISTING_MAX_CHARS);
        self.offset = self.offset.max(taken[taken.len() - 1].seq);
        let names = &self.names;
        let descriptor = NatsDescriptor {
            stream: &names.stream,
            consumer: &names.consumer,
            created: &names.created,
            stored: &listing.unconfirmed,
            consumer_created: &names.consumer_created,
            acked: &listing.confirmed,
        }
        .encode();
        Some(Batch {
            data,
            records: taken.len(),
            end_offset: self.offset,
            descriptor,
        })
    }

    /// At a stop: the reply subjects of every held message (given back), and of what was
    /// handed over and not made durable; they leave. In stream order: the server delivers
    /// what is given back in the order it was given back, and the next reader then stores it
    /// in stream order too.
    pub fn take_back(&mut self) -> Vec<(u64, String)> {
        let mut back: Vec<(u64, String)> = self
            .held
            .drain(..)
            .filter_map(|h| h.message.reply.map(|r| (h.seq, r.to_string())))
            .collect();
        self.held_seqs.clear();
        back.extend(self.ledger.take_not_durable());
        back.sort_unstable_by_key(|(seq, _)| *seq);
        back
    }
}

/// Everything the tasks and the Python side share.
#[derive(Debug)]
pub struct Shared {
    /// The state (see [`Core`]).
    core: Mutex<Core>,
    /// The connection's state and the log lines.
    pub link: Arc<Link>,
    /// Wakes the Python side (a batch, a line, a result).
    pub python: Arc<Notifier>,
    /// Wakes the reader: room was made (confirmations, the floor, a reconnect).
    pub room: Notify,
    /// Wakes the acknowledging task: storage made progress, a redelivery to acknowledge.
    pub durable: Notify,
    /// Wakes a stop waiting for confirmations.
    pub confirmations: Notify,
    /// Counters.
    pub stats: Stats,
    /// The most messages this replica holds fetched and not confirmed acknowledged.
    pub max_unacked: usize,
    /// Messages asked for per pull request.
    pub batch: usize,
}

impl Shared {
    /// Shared state around `core`.
    pub fn new(
        core: Core,
        link: Arc<Link>,
        python: Arc<Notifier>,
        max_unacked: usize,
        batch: usize,
    ) -> Shared {
        Shared {
            core: Mutex::new(core),
            link,
            python,
            room: Notify::new(),
            durable: Notify::new(),
            confirmations: Notify::new(),
            stats: Stats::default(),
            max_unacked,
            batch,
        }
    }

    /// Room was made (a confirmation, the floor, restored entries dropped): the reader may
    /// pull again, and the Python side may cut a batch of what it holds.
    pub fn room_made(&self) {
        self.room.notify_one();
        if self.lock().holds() {
            self.python.notify();
        }
    }

    /// Times the reader's wait for room (`no_room`: it may not pull; or messages held that
    /// the listing has no room for): once it has waited [`STALL_WARN`], says so with the
    /// cause (a WARNING, counted); when it ends, says that (INFO) if the start was said.
    /// Returns when to look again (`None`: no need).
    pub fn stall_check(&self, no_room: bool) -> Option<Instant> {
        let now = Instant::now();
        let mut core = self.lock();
        if !no_room && !core.listing_wait {
            if let Some(started) = core.stall_started.take() {
                if core.stall_said {
                    self.link.events().say(
                        Level::Info,
                        format!(
                            "NATS: reading again after waiting {:.1}s for room",
                            (now - started).as_secs_f64()
                        ),
                    );
                }
            }
            core.stall_said = false;
            return None;
        }
        let started = *core.stall_started.get_or_insert(now);
        if core.stall_said {
            return None;
        }
        let waited = now - started;
        if waited < STALL_WARN {
            return Some(started + STALL_WARN);
        }
        core.stall_said = true;
        Stats::add(&self.stats.stalls, 1);
        let cause = self.stall_cause(&core, !no_room);
        drop(core);
        self.link.events().say(
            Level::Warning,
            format!(
                "NATS: reading has waited {:.0}s for room: {cause}",
                waited.as_secs_f64()
            ),
        );
        None
    }

    /// Why the reader waits for room, by the ledger's counts.
    fn stall_cause(&self, core: &Core, listing_full: bool) -> String {
        let counts = core.ledger.counts();
        let mut parts = Vec::new();
        if counts.pending > 0 {
            parts.push(format!(
                "{} fetched and not yet made durable by storage",
                counts.pending
            ));
        }
        if counts.durable > 0 {
            let offline = if self.link.state().connected {
                ""
            } else {
                " (no server connected)"
            };
            parts.push(format!(
                "{} stored, their acknowledgement not confirmed by the server{offline}",
                counts.durable
            ));
        }
        if counts.restored > 0 {
            parts.push(format!(
                "{} stored before this start, listed until the server delivers them again or \
                 ack_wait has passed",
                counts.restored
            ));
        }
        let what = if listing_full {
            "the checkpoint's listing of the stored messages not confirmed acknowledged is full"
                .to_string()
        } else {
            format!(
                "this replica holds the most messages it may ({}) fetched and not confirmed \
                 acknowledged",
                self.max_unacked
            )
        };
        format!("{what}: {}", parts.join(", "))
    }

    /// The state, locked (never across an `.await`).
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::ledger::Listing;
    use bytes::Bytes;

    /// A delivery of `seq` as the server sends it.
    pub(crate) fn delivery(seq: u64, delivered: u64) -> Message {
        Message {
            subject: "S.a".into(),
            reply: Some(
                format!("$JS.ACK.S.c.{delivered}.{seq}.{seq}.1700000000000000000.0").into(),
            ),
            payload: Bytes::from_static(b"hi"),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn python_is_woken_once_per_burst_of_deliveries() {
        // Only the first delivery since Python last took what arrived asks for a wake-up;
        // Python's take then gets the whole burst, and the next delivery asks again.
        let mut core = Core::default();
        let stats = Stats::default();
        assert!(core.arrive(delivery(1, 1)));
        assert!(!core.arrive(delivery(2, 1)));
        assert!(!core.arrive(delivery(3, 1)));
        core.take_arrived(&stats);
        assert_eq!(core.unsorted(), 3);
        assert!(core.arrive(delivery(4, 1)));
    }

    #[test]
    fn batches_stay_within_what_the_checkpoint_can_list() {
        // test_nats.py's test of the same name: scattered sequences make a long listing; a
        // batch is cut to what fits, the rest waits; a redelivery of one stored is skipped.
        let mut core = Core {
            names: Names {
                stream: "S".into(),
                consumer: "c".into(),
                created: "2026-12-07T07:15:33.123400Z".into(),
                consumer_created: String::new(),
            },
            ..Core::default()
        };
        core.ledger = Ledger::new([], [], 100_000, Listing::default());
        let stats = Stats::default();
        for i in 0..2000u64 {
            core.arrive(delivery(1_000_000 + 2 * i, 1));
        }
        assert!(!core.take_arrived(&stats));
        assert_eq!(core.unsorted(), 2000);
        let batch = core.batch().expect("a batch");
        assert!(batch.records < 2000);
        assert!(batch.descriptor.len() <= LISTING_MAX_CHARS + 200);
        assert_eq!(
            batch.data.iter().filter(|&&b| b == b'\n').count(),
            batch.records
        );
        assert!(batch
            .data
            .starts_with(br#"{"seq":1000000,"subject":"S.a","data":"aGk="}"#));
        // Smaller batches while they fit, until the listing is full of unconfirmed entries
        // (none is confirmed here): the rest waits, held.
        let mut handed = batch.records;
        while let Some(more) = core.batch() {
            let listed: serde_json::Value =
                serde_json::from_str(&more.descriptor).expect("descriptor");
            let stored = listed["stored"].as_str().expect("stored").len();
            assert!(stored <= LISTING_MAX_CHARS, "{stored}");
            handed += more.records;
        }
        assert!(handed < 2000);
        assert_eq!(core.ledger.in_flight(), handed);
        assert!(core.holds());
        // A redelivery of a stored one: skipped, counted, nothing held twice.
        let held = core.unsorted();
        core.arrive(delivery(1_000_000, 2));
        assert!(
            !core.take_arrived(&stats),
            "not durable yet: nothing to acknowledge"
        );
        assert_eq!(core.unsorted(), held);
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.redelivered.load(Ordering::Relaxed), 1);
        assert_eq!(stats.fetched.load(Ordering::Relaxed), 2001);
        // What is held and what was not made durable go back at a stop.
        let back = core.take_back();
        assert_eq!(back.len(), 2000);
        assert_eq!(core.ledger.in_flight(), 0);
        assert!(!core.holds());
    }
}
