//! The NATS source's ledger: the stream sequences stored here that a delivery may bring
//! again. A port of shovel/sources/nats/ledger.py (gone with step 7 of issue 17: see
//! 1db876e or older) with the same states, counts and rules.
//!
//! An entry, by stream sequence, is one of:
//!
//! - **pending**: in a batch handed to the pipeline, not yet durable;
//! - **durable**: its batch is durable (its checkpoint is on disk): acknowledged, the
//!   server's confirmation awaited (sent again while it does not come);
//! - **restored**: listed by the checkpoint as stored and not confirmed: an earlier run stored
//!   it, and whether the server holds it acknowledged is not known (a delivery of it brings a
//!   subject to acknowledge it with, and makes it durable-and-unacknowledged again);
//! - **confirmed**: the server confirmed the acknowledgement: an empty reply without headers.
//!   A reply with a status (503, no responders: while the consumer has no leader, nothing
//!   answers its acknowledgement subject) confirms nothing; the entry stays durable.
//!
//! Batches are made durable in the order they were handed over, so the storage's count of
//! durable records says which ones are.
//!
//! What bounds the ledger is what this replica does, never what other clients hold. The
//! consumer's acknowledgement floor stays below a message another client holds
//! unacknowledged, for as long as it holds it: waiting for the floor to pass an entry stopped
//! every replica on a consumer once one message was held elsewhere (see ledger.py's history).
//! So:
//!
//! - pending and durable entries, this replica's own deliveries, stay until the server
//!   confirms them (it confirms every acknowledgement, of a message already acknowledged too):
//!   at most what the reader fetches, which it bounds;
//! - restored entries stay until delivered again, or until [`Ledger::drop_restored`] (called
//!   once ack_wait has passed since the consumer was bound: any of them the server did not
//!   hold acknowledged has by then been delivered again, here or to another replica);
//! - confirmed entries are kept only as room allows: at most `kept_max` of them, and what the
//!   checkpoint's listing has room for beside the others, the longest confirmed leaving first.
//!   They guard against a server that loses an acknowledgement it had confirmed: a redelivery
//!   of one still listed is acknowledged again, not stored twice here;
//!
//! and any entry leaves once the acknowledgement floor passes it, except a pending one (it is
//! acknowledged once durable: the server confirms that too).
//!
//! The checkpoint lists the entries ([`Listing`]): the unconfirmed ones (pending, durable,
//! restored) and, apart, the confirmed ones it has room for. After a crash, a delivery of a
//! listed sequence is acknowledged, never stored twice in this output directory. A stop
//! records beside it which of the listed ones were confirmed after it was written
//! ([`super::stoprecord`]).
//!
//! Unlike the Python dict, entries are kept sorted by sequence (a `BTreeMap`): lists the
//! ledger returns (acknowledgements to send, sequences not confirmed, ...) come in ascending
//! order, where Python gave them in the order the entries were made. What is done with them
//! (sent, counted, encoded sorted) does not depend on it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::ranges;
use super::seqset::SeqSet;

/// A sequence stored (or being stored) here.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The acknowledgement subject of its latest delivery in this run; `None` while only the
    /// checkpoint knows it (a delivery brings one).
    pub reply: Option<String>,
    /// When its latest delivery was fetched (kept across redeliveries, as in Python); `None`
    /// for one known only from the checkpoint.
    pub fetched_at: Option<Instant>,
    /// Its batch is durable (or the checkpoint listed it).
    pub durable: bool,
    /// When its acknowledgement was last sent; `None`: not since its latest delivery.
    pub ack_sent_at: Option<Instant>,
    /// The server confirmed its acknowledgement.
    pub confirmed: bool,
    /// Its place among the confirmed ones kept (`Ledger::kept`); `None` when not kept.
    kept: Option<u64>,
}

impl Entry {
    fn new(reply: Option<String>, fetched_at: Option<Instant>, durable: bool) -> Entry {
        Entry {
            reply,
            fetched_at,
            durable,
            ack_sent_at: None,
            confirmed: false,
            kept: None,
        }
    }

    /// Delivered in this run and not yet known acknowledged: counted in `in_flight`.
    pub fn delivered(&self) -> bool {
        self.reply.is_some() && !self.confirmed
    }
}

/// What a checkpoint lists: stored sequences not confirmed acknowledged, and (apart) some
/// confirmed ones; both as [`ranges`] texts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The stored sequences whose acknowledgement is not confirmed (`stored` in the
    /// descriptor).
    pub unconfirmed: String,
    /// Some whose acknowledgement is confirmed (`acked` in the descriptor).
    pub confirmed: String,
}

impl Listing {
    /// Characters of both texts together: what the checkpoint's limit counts.
    pub fn len(&self) -> usize {
        self.unconfirmed.len() + self.confirmed.len()
    }

    /// Whether both texts are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The unconfirmed entries by state, for messages and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Handed over, not yet durable.
    pub pending: usize,
    /// Durable, delivered in this run, not confirmed.
    pub durable: usize,
    /// Listed by the checkpoint, not delivered again.
    pub restored: usize,
}

/// A delivery the server now holds acknowledged (its confirmation came, or the floor passed
/// it): counted once, and its latency measured from its fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acknowledged {
    /// Its stream sequence.
    pub seq: u64,
    /// When it was fetched (`None`: known only from the checkpoint).
    pub fetched_at: Option<Instant>,
}

/// A batch handed over and not yet durable.
#[derive(Debug)]
struct Batch {
    /// Records handed over in this run up to its end.
    end: u64,
    /// Its sequences.
    seqs: Vec<u64>,
    /// The listing its checkpoint holds.
    listing: Listing,
}

/// See the module doc. Owned by one task at a time (the source keeps it under its lock).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every entry, by stream sequence.
    entries: BTreeMap<u64, Entry>,
    /// The confirmed entries kept, by when they were confirmed (a ticket that only grows):
    /// they leave first for room, the longest confirmed first.
    kept: BTreeMap<u64, u64>,
    /// The next ticket of `kept`.
    next_ticket: u64,
    /// The most confirmed entries kept.
    kept_max: usize,
    /// Restored entries not delivered again (nor passed by the floor): a count, asked often.
    restored: usize,
    /// Entries delivered in this run and not confirmed: a count, asked often.
    in_flight: usize,
    /// Batches handed over and not yet durable, in order.
    batches: VecDeque<Batch>,
    /// Records handed over in this run.
    records_handed: u64,
    /// The listing of the checkpoint on disk: the restored one until a batch of this run is
    /// durable.
    durable_listing: Listing,
    /// The sequences stored here whose entries left while durable (passed by the floor,
    /// confirmed and out of room, restored and not delivered again): see
    /// [`Ledger::readmit`]. Not listed in the checkpoint: it lasts as long as the run.
    left_stored: SeqSet,
}

impl Ledger {
    /// Restores the entries the checkpoint on disk lists (`on_disk`, as written): those
    /// `unconfirmed`, and those known `confirmed` (kept, up to `kept_max`).
    pub fn new(
        unconfirmed: impl IntoIterator<Item = u64>,
        confirmed: impl IntoIterator<Item = u64>,
        kept_max: usize,
        on_disk: Listing,
    ) -> Ledger {
        let mut ledger = Ledger {
            kept_max,
            durable_listing: on_disk,
            ..Ledger::default()
        };
        for seq in confirmed {
            // A sequence listed twice is one entry, kept in its first place (as Python's
            // dict assignment left it).
            if ledger.entries.contains_key(&seq) {
                continue;
            }
            let mut entry = Entry::new(None, None, true);
            entry.confirmed = true;
            ledger.entries.insert(seq, entry);
            ledger.keep(seq);
        }
        for seq in unconfirmed {
            ledger.unkeep(seq);
            ledger.entries.insert(seq, Entry::new(None, None, true));
        }
        ledger.restored = ledger.entries.values().filter(|e| !e.confirmed).count();
        ledger
    }

    /// Messages delivered in this run, stored or being stored, not yet known acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Restored entries not delivered again (nor passed by the acknowledgement floor).
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Records handed over in this run.
    pub fn records_handed(&self) -> u64 {
        self.records_handed
    }

    /// The listing of the checkpoint on disk.
    pub fn durable_listing(&self) -> &Listing {
        &self.durable_listing
    }

    /// The entry of `seq`, if any.
    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// The sequences of every entry, ascending.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// The unconfirmed entries by state (a walk over the ledger: for an occasional message).
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for e in self.entries.values().filter(|e| !e.confirmed) {
            if !e.durable {
                counts.pending += 1;
            } else if e.reply.is_none() {
                counts.restored += 1;
            } else {
                counts.durable += 1;
            }
        }
        counts
    }

    /// Keeps confirmed `seq` as the most recently confirmed; the longest confirmed leave
    /// while more than `kept_max` are kept.
    fn keep(&mut self, seq: u64) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            if entry.kept.is_none() {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                entry.kept = Some(ticket);
                self.kept.insert(ticket, seq);
            }
        }
        while self.kept.len() > self.kept_max {
            match self.kept.first_key_value() {
                Some((_, &oldest)) => self.drop_entry(oldest),
                None => break,
            }
        }
    }

    /// `seq` is no longer among the confirmed ones kept (its entry stays).
    fn unkeep(&mut self, seq: u64) {
        if let Some(ticket) = self.entries.get_mut(&seq).and_then(|e| e.kept.take()) {
            self.kept.remove(&ticket);
        }
    }

    /// A delivery of `seq`: its entry if it is already stored (or being stored) here, with
    /// the delivery's acknowledgement subject kept for the acknowledgement (to be sent again:
    /// the server delivered it again, so it does not hold it acknowledged); `None` if new.
    /// (See [`Ledger::readmit`] for one stored here whose entry left.)
    pub fn known(&mut self, seq: u64, reply: &str) -> Option<&Entry> {
        let entry = self.entries.get(&seq)?;
        let (was_restored, was_delivered) =
            (entry.reply.is_none() && !entry.confirmed, entry.delivered());
        if was_restored {
            self.restored -= 1;
        }
        if !was_delivered {
            self.in_flight += 1;
        }
        self.unkeep(seq);
        let entry = self.entries.get_mut(&seq)?;
        entry.reply = Some(reply.to_string());
        entry.confirmed = false;
        // Whatever acknowledgement was sent did not take: send one for this delivery.
        entry.ack_sent_at = None;
        Some(entry)
    }

    /// The listing of every unconfirmed entry and `seqs` (new ones).
    fn unconfirmed_with(&self, seqs: impl IntoIterator<Item = u64>) -> String {
        let listed = self
            .entries
            .iter()
            .filter(|(_, e)| !e.confirmed)
            .map(|(&s, _)| s);
        ranges::encode(listed.chain(seqs))
    }

    /// Whether handing `seqs` over now keeps what must be listed (every unconfirmed entry)
    /// within `max_chars`; confirmed entries make room.
    pub fn fits(&self, seqs: impl IntoIterator<Item = u64>, max_chars: usize) -> bool {
        let listed = self
            .entries
            .iter()
            .filter(|(_, e)| !e.confirmed)
            .map(|(&s, _)| s);
        ranges::encoded_len(listed.chain(seqs)) <= max_chars
    }

    /// The checkpoint's listing now, within `max_chars` if the unconfirmed entries are
    /// ([`Ledger::fits`] said so): the confirmed entries that do not fit beside them leave the
    /// ledger, the longest confirmed first.
    pub fn listing(&mut self, max_chars: usize) -> Listing {
        let unconfirmed = self.unconfirmed_with([]);
        // None when the unconfirmed ones alone are over: then no confirmed one fits.
        let room = max_chars.checked_sub(unconfirmed.len());
        let kept: Vec<u64> = self.kept.values().copied().collect();
        // Whether the listing of the `n` most recently confirmed fits (measured, not written).
        let newest_fit = |n: usize| {
            room.is_some_and(|room| {
                ranges::encoded_len(kept[kept.len() - n..].iter().copied()) <= room
            })
        };
        let mut count = kept.len();
        if !newest_fit(count) {
            // The most recently confirmed that fit: a bisection over how many (adding one can
            // join two ranges, so the length is not monotonic: any count that fits will do).
            let (mut low, mut high) = (0, kept.len());
            while low < high {
                let mid = (low + high).div_ceil(2);
                if newest_fit(mid) {
                    low = mid;
                } else {
                    high = mid - 1;
                }
            }
            for &seq in &kept[..kept.len() - low] {
                self.drop_entry(seq);
            }
            count = low;
        }
        Listing {
            unconfirmed,
            confirmed: ranges::encode(kept[kept.len() - count..].iter().copied()),
        }
    }

    /// Records a batch of `(seq, reply, fetched_at)` handed to the pipeline
    /// ([`Ledger::fits`] said it does); returns the listing its checkpoint holds.
    pub fn hand_over(&mut self, batch: Vec<(u64, String, Instant)>, max_chars: usize) -> Listing {
        let mut seqs = Vec::with_capacity(batch.len());
        for (seq, reply, fetched_at) in batch {
            // The source hands over only sequences `known` did not know. Were one known, it
            // leaves first, so that the counts stay true (Python overwrote it).
            self.drop_entry(seq);
            self.entries
                .insert(seq, Entry::new(Some(reply), Some(fetched_at), false));
            seqs.push(seq);
        }
        self.in_flight += seqs.len();
        self.records_handed += seqs.len() as u64;
        let listing = self.listing(max_chars);
        self.batches.push_back(Batch {
            end: self.records_handed,
            seqs,
            listing: listing.clone(),
        });
        listing
    }

    /// Marks durable the batches covered by `records_durable` (records of this run that
    /// storage made durable): [`Ledger::unconfirmed`] then lists them, to acknowledge.
    pub fn made_durable(&mut self, records_durable: u64) {
        while let Some(batch) = self.batches.front() {
            if batch.end > records_durable {
                break;
            }
            let Some(batch) = self.batches.pop_front() else {
                break;
            };
            for seq in &batch.seqs {
                if let Some(entry) = self.entries.get_mut(seq) {
                    entry.durable = true;
                }
            }
            self.durable_listing = batch.listing;
        }
    }

    /// The server confirmed the acknowledgement of `seq`; returns it, if that is news.
    pub fn confirmed(&mut self, seq: u64) -> Option<Acknowledged> {
        let entry = self.entries.get_mut(&seq)?;
        if !entry.durable || !entry.delivered() {
            return None;
        }
        entry.confirmed = true;
        let acknowledged = Acknowledged {
            seq,
            fetched_at: entry.fetched_at,
        };
        self.in_flight -= 1;
        self.keep(seq);
        Some(acknowledged)
    }

    /// Its acknowledgement was sent at `at` (after [`Ledger::unconfirmed`] listed it).
    pub fn ack_sent(&mut self, seq: u64, at: Instant) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.ack_sent_at = Some(at);
        }
    }

    /// Durable sequences with a known subject whose acknowledgement was not sent since
    /// `sent_before`: to send (again).
    pub fn unconfirmed(&self, sent_before: Instant) -> Vec<(u64, String)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.durable && !e.confirmed)
            .filter(|(_, e)| e.ack_sent_at.is_none_or(|at| at < sent_before))
            .filter_map(|(&s, e)| e.reply.clone().map(|r| (s, r)))
            .collect()
    }

    /// The stored sequences (durable or restored) whose acknowledgement is not confirmed.
    pub fn not_confirmed(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.durable && !e.confirmed)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Sequences whose acknowledgement was sent and is not confirmed: what a stop waits for.
    pub fn awaiting_confirmation(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.ack_sent_at.is_some() && !e.confirmed)
            .map(|(&s, _)| s)
            .collect()
    }

    /// Drops the durable entries at or below the consumer's acknowledgement floor (the
    /// server holds them acknowledged). Returns how many, and those whose acknowledgement was
    /// sent and not yet confirmed: acknowledged now, as if confirmed (a confirmation can be
    /// lost while its acknowledgement is applied, with a server that fails over or a
    /// connection that drops; one that comes after this finds no entry).
    pub fn below_floor(&mut self, ack_floor: u64) -> (usize, Vec<Acknowledged>) {
        let gone: Vec<u64> = self
            .entries
            .range(..=ack_floor)
            .filter(|(_, e)| e.durable)
            .map(|(&s, _)| s)
            .collect();
        let mut acknowledged = Vec::new();
        for &seq in &gone {
            if let Some(entry) = self.entries.get(&seq) {
                if entry.delivered() && entry.ack_sent_at.is_some() {
                    acknowledged.push(Acknowledged {
                        seq,
                        fetched_at: entry.fetched_at,
                    });
                }
            }
            self.drop_entry(seq);
        }
        (gone.len(), acknowledged)
    }

    /// Drops the restored entries that were not delivered again; returns how many.
    pub fn drop_restored(&mut self) -> usize {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.reply.is_none() && !e.confirmed)
            .map(|(&s, _)| s)
            .collect();
        for &seq in &gone {
            self.drop_entry(seq);
        }
        gone.len()
    }

    /// `seq` leaves the ledger, and the counts with it.
    fn drop_entry(&mut self, seq: u64) {
        let Some(entry) = self.entries.remove(&seq) else {
            return;
        };
        if let Some(ticket) = entry.kept {
            self.kept.remove(&ticket);
        }
        if entry.delivered() {
            self.in_flight -= 1;
        } else if entry.reply.is_none() && !entry.confirmed {
            self.restored -= 1;
        }
        if entry.durable {
            self.left_stored.insert(seq);
        }
    }

    /// A delivery of `seq` that [`Ledger::known`] did not know: if its entry left the ledger
    /// while durable (it is stored here), it is made a durable entry again, with the
    /// delivery's subject to acknowledge it with, and returned; `None` if it is new.
    ///
    /// A server that loses acknowledgements it had confirmed delivers such messages again
    /// (a lone nats-server killed while acknowledgements stream in came back with a floor far
    /// below the one it had reported): they are acknowledged, not stored twice, for as long
    /// as this run lasts. (The Python ledger forgot them; `known` still does as it did.)
    pub fn readmit(&mut self, seq: u64, reply: &str) -> Option<&Entry> {
        if self.entries.contains_key(&seq) || !self.left_stored.contains(seq) {
            return None;
        }
        self.entries
            .insert(seq, Entry::new(Some(reply.to_string()), None, true));
        self.in_flight += 1;
        self.entries.get(&seq)
    }

    /// The runs of consecutive sequences that [`Ledger::readmit`] remembers.
    pub fn left_stored_runs(&self) -> usize {
        self.left_stored.runs()
    }

    /// Sequences handed over whose batches never became durable, with their subjects: they
    /// leave the ledger (to be given back).
    pub fn take_not_durable(&mut self) -> Vec<(u64, String)> {
        let back: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.durable)
            .filter_map(|(&s, e)| e.reply.clone().map(|r| (s, r)))
            .collect();
        for (seq, _) in &back {
            self.drop_entry(*seq);
        }
        self.batches.clear();
        back
    }
}

#[cfg(test)]
mod tests {
    //! The ledger tests of tests/unit/sources/test_nats.py, step for step.

    use std::time::Duration;

    use super::*;

    /// As in nats/source.py.
    const LISTING_MAX_CHARS: usize = 3000;

    /// A clock: `at(s)` is `s` seconds after the tests' epoch (Python used plain floats).
    fn at(s: f64) -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now) + Duration::from_secs_f64(s)
    }

    fn listing(unconfirmed: &str, confirmed: &str) -> Listing {
        Listing {
            unconfirmed: unconfirmed.into(),
            confirmed: confirmed.into(),
        }
    }

    fn delivery(seq: u64, fetched_at: f64) -> (u64, String, Instant) {
        (seq, format!("r{seq}"), at(fetched_at))
    }

    fn pairs(list: &[(u64, &str)]) -> Vec<(u64, String)> {
        list.iter().map(|&(s, r)| (s, r.to_string())).collect()
    }

    #[test]
    fn ledger_acknowledges_batches_in_order_once_durable() {
        let mut ledger = Ledger::new([5], [], 10, Listing::default());
        ledger.hand_over(
            vec![delivery(10, 1.0), delivery(11, 1.0)],
            LISTING_MAX_CHARS,
        );
        assert_eq!(
            ledger.hand_over(vec![delivery(12, 2.0)], LISTING_MAX_CHARS),
            listing("5,10-12", "")
        );
        assert_eq!(ledger.in_flight(), 3);
        assert_eq!(ledger.restored(), 1);
        // Nothing is durable: nothing to acknowledge, and a confirmation cannot come early.
        ledger.made_durable(1);
        assert_eq!(ledger.unconfirmed(at(10.0)), vec![]);
        assert_eq!(ledger.confirmed(10), None);
        // The first batch's two records are durable: its listing is the checkpoint's.
        ledger.made_durable(2);
        assert_eq!(ledger.durable_listing(), &listing("5,10-11", ""));
        assert_eq!(
            ledger.unconfirmed(at(10.0)),
            pairs(&[(10, "r10"), (11, "r11")])
        );
        // (Taken to be given back at a stop, it would leave the ledger.)
        let not_durable: Vec<u64> = ledger
            .seqs()
            .filter(|&s| ledger.entry(s).is_some_and(|e| !e.durable))
            .collect();
        assert_eq!(not_durable, vec![12]);
        // A redelivery of a durable message brings a new subject to acknowledge with.
        let entry = ledger.known(11, "r11-again").expect("known");
        assert!(entry.durable);
        assert_eq!(ledger.known(99, "r99"), None);
        let confirmed = ledger.confirmed(10).expect("news");
        assert_eq!(confirmed.fetched_at, Some(at(1.0)));
        assert_eq!(ledger.confirmed(10), None);
        assert_eq!(ledger.unconfirmed(at(10.0)), pairs(&[(11, "r11-again")]));
        assert_eq!(ledger.in_flight(), 2);
        // Confirmed, 10 is listed apart; 5 (restored) and 11 are stored and not confirmed.
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("5,11-12", "10"));
        assert_eq!(ledger.not_confirmed(), vec![5, 11]);
        // The acknowledgement floor passes 5, 10 and 11: they leave; 11's acknowledgement was
        // sent and not confirmed, so the floor is the news that it is acknowledged.
        ledger.ack_sent(11, at(3.0));
        let (dropped, acknowledged) = ledger.below_floor(11);
        assert_eq!(dropped, 3);
        assert_eq!(acknowledged.iter().map(|a| a.seq).collect::<Vec<_>>(), [11]);
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("12", ""));
        assert_eq!((ledger.in_flight(), ledger.restored()), (1, 0));
        // A message delivered again after its confirmation is acknowledged again.
        ledger.made_durable(3);
        assert!(ledger.confirmed(12).is_some());
        assert_eq!(ledger.unconfirmed(at(10.0)), vec![]);
        assert!(ledger.known(12, "r12-again").is_some());
        assert_eq!(ledger.unconfirmed(at(10.0)), pairs(&[(12, "r12-again")]));
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("12", ""));
    }

    #[test]
    fn what_left_the_ledger_stored_is_acknowledged_again_not_stored() {
        // A server killed and started again may deliver again what it had confirmed, under
        // the floor it had reported: stored here, such a message is readmitted, to be
        // acknowledged, for the rest of the run; one given back at a stop (never durable) or
        // never seen is new.
        let mut ledger = Ledger::new([5], [], 1, Listing::default());
        ledger.hand_over(
            vec![delivery(10, 1.0), delivery(11, 1.0), delivery(12, 1.0)],
            LISTING_MAX_CHARS,
        );
        ledger.hand_over(vec![delivery(20, 2.0)], LISTING_MAX_CHARS);
        ledger.made_durable(3);
        for seq in [10, 11, 12] {
            assert!(ledger.confirmed(seq).is_some());
        }
        // 10 and 11 left for room (one confirmed one kept); the floor passes 12 and 5.
        assert_eq!(ledger.seqs().collect::<Vec<_>>(), [5, 12, 20]);
        assert_eq!(ledger.below_floor(12).0, 2);
        assert_eq!(ledger.seqs().collect::<Vec<_>>(), [20]);
        // 20 was never durable: given back, it leaves and is not remembered.
        assert_eq!(ledger.take_not_durable(), pairs(&[(20, "r20")]));
        assert_eq!(ledger.left_stored_runs(), 2);
        for seq in [5, 10, 11, 12] {
            let reply = format!("again-{seq}");
            assert_eq!(ledger.known(seq, &reply), None);
            let entry = ledger.readmit(seq, &reply).expect("stored here");
            assert!(entry.durable && !entry.confirmed);
            assert_eq!(entry.reply.as_deref(), Some(reply.as_str()));
            // Once is enough: it is an entry again.
            assert_eq!(ledger.readmit(seq, &reply), None);
            assert!(ledger.known(seq, &reply).is_some());
        }
        for seq in [6, 20, 99] {
            assert_eq!(ledger.readmit(seq, "r"), None);
        }
        assert_eq!(ledger.in_flight(), 4);
        assert_eq!(
            ledger.unconfirmed(at(10.0)),
            pairs(&[
                (5, "again-5"),
                (10, "again-10"),
                (11, "again-11"),
                (12, "again-12")
            ])
        );
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("5,10-12", ""));
    }

    /// Confirmed entries are listed only as room allows: however many there are above an
    /// acknowledgement floor that does not move (scattered, as replicas interleave), they
    /// never keep a batch out; those confirmed last stay listed, and no more than kept_max.
    #[test]
    fn confirmed_entries_make_room_the_longest_confirmed_first() {
        let mut ledger = Ledger::new([], [], 1000, Listing::default());
        let seqs: Vec<u64> = (1000..2200).step_by(2).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            ledger.hand_over(vec![delivery(seq, 0.0)], LISTING_MAX_CHARS);
            ledger.made_durable(i as u64 + 1);
            assert!(ledger.confirmed(seq).is_some());
        }
        // 600 scattered sequences: 3000 characters to list them all.
        assert_eq!(ledger.in_flight(), 0);
        assert!(ledger.fits((5000..5100).step_by(2), 300));
        let listed = ledger.listing(200);
        assert_eq!(listed.unconfirmed, "");
        assert!(
            180 < listed.len() && listed.len() <= 200,
            "{}",
            listed.len()
        );
        let kept = ranges::decode(&listed.confirmed).expect("ranges");
        assert_eq!(kept, seqs[seqs.len() - kept.len()..]);
        assert_eq!(ledger.seqs().collect::<Vec<_>>(), kept);
        let mut few = Ledger::new([], [], 3, Listing::default());
        for (i, seq) in (1..=10).enumerate() {
            few.hand_over(vec![delivery(seq, 0.0)], LISTING_MAX_CHARS);
            few.made_durable(i as u64 + 1);
            few.confirmed(seq);
        }
        assert_eq!(few.listing(LISTING_MAX_CHARS), listing("", "8-10"));
    }

    /// Entries the checkpoint lists: the unconfirmed ones stay until delivered again (then
    /// acknowledged like the others) or dropped, the confirmed ones are kept as room allows.
    #[test]
    fn restored_entries_leave_when_delivered_or_dropped() {
        let mut ledger = Ledger::new([1, 2, 3], [7], 5, listing("1-3", "7"));
        assert_eq!(ledger.durable_listing(), &listing("1-3", "7"));
        assert_eq!((ledger.restored(), ledger.in_flight()), (3, 0));
        assert!(ledger.known(2, "r2").is_some());
        assert_eq!((ledger.restored(), ledger.in_flight()), (2, 1));
        assert_eq!(ledger.unconfirmed(at(10.0)), pairs(&[(2, "r2")]));
        assert_eq!(ledger.not_confirmed(), vec![1, 2, 3]);
        assert_eq!(ledger.drop_restored(), 2);
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("2", "7"));
        assert_eq!(
            ledger.counts(),
            Counts {
                pending: 0,
                durable: 1,
                restored: 0
            }
        );
    }

    /// The ledger half of test_nats_acks.py: a 503 on the acknowledgement inbox is no
    /// confirmation (the source does not call `confirmed` for it), so the stop lists the
    /// sequence; the next run, restored from that stop, does not store its redelivery again,
    /// even after 1,410 more were stored and confirmed (more than it keeps of confirmed ones).
    #[test]
    fn message_redelivered_after_failover_is_not_stored_twice() {
        // batch 50, queue 8: max_unacked (and kept_max) 600, as in the test's replicas.
        let kept_max = 600;
        let mut first = Ledger::new([], [], kept_max, Listing::default());
        let stored = first.hand_over(
            vec![
                delivery(4583, 0.0),
                delivery(4586, 0.0),
                delivery(4589, 0.0),
            ],
            LISTING_MAX_CHARS,
        );
        first.made_durable(3);
        for seq in [4583, 4589] {
            assert!(first.confirmed(seq).is_some());
        }
        // 4586's answer is a 503: not a confirmation.
        let not_confirmed = first.not_confirmed();
        assert_eq!(
            not_confirmed,
            vec![4586],
            "a 503 was taken as a confirmation"
        );
        assert_eq!(stored, listing("4583,4586,4589", ""));
        // The next run: the checkpoint lists the three, the stop record says 4586 only is
        // not confirmed (as NatsSource.resume splits them).
        let still = ranges::decode(&ranges::encode(not_confirmed)).expect("ranges");
        let listed = ranges::decode(&stored.unconfirmed).expect("ranges");
        let (unconfirmed, confirmed): (Vec<u64>, Vec<u64>) =
            listed.iter().partition(|s| still.contains(s));
        let mut later = Ledger::new(unconfirmed, confirmed, kept_max, stored);
        // The new consumer leader's floor is below the stored messages.
        assert!(later.below_floor(4583).0 <= 1);
        let mut handed = 0;
        for start in (4591..6001).step_by(50) {
            let seqs: Vec<u64> = (start..(start + 50).min(6001)).collect();
            handed += seqs.len() as u64;
            later.hand_over(
                seqs.iter().map(|&s| delivery(s, 0.0)).collect(),
                LISTING_MAX_CHARS,
            );
            later.made_durable(handed);
            for seq in seqs {
                assert!(later.confirmed(seq).is_some());
            }
        }
        assert_eq!(handed, 1410);
        // ack_wait after its first delivery, the new consumer leader delivers 4586 again.
        assert!(
            later.known(4586, "r4586-again").is_some(),
            "4586 would be stored a second time"
        );
    }

    #[test]
    fn what_was_not_durable_is_taken_back_and_counts_stay_true() {
        let mut ledger = Ledger::new([1], [2], 10, listing("1", "2"));
        ledger.hand_over(vec![delivery(10, 0.0)], LISTING_MAX_CHARS);
        ledger.hand_over(
            vec![delivery(11, 0.0), delivery(12, 0.0)],
            LISTING_MAX_CHARS,
        );
        ledger.made_durable(1);
        assert_eq!(
            ledger.counts(),
            Counts {
                pending: 2,
                durable: 1,
                restored: 1
            }
        );
        assert_eq!(ledger.awaiting_confirmation(), Vec::<u64>::new());
        ledger.ack_sent(10, at(1.0));
        assert_eq!(ledger.awaiting_confirmation(), vec![10]);
        // Sent at 1.0: not due again before 1.0 has passed.
        assert_eq!(ledger.unconfirmed(at(1.0)), vec![]);
        assert_eq!(ledger.unconfirmed(at(1.5)), pairs(&[(10, "r10")]));
        assert_eq!(
            ledger.take_not_durable(),
            pairs(&[(11, "r11"), (12, "r12")])
        );
        assert_eq!(ledger.in_flight(), 1);
        // Their batch is gone: storage's count no longer makes anything durable.
        ledger.made_durable(3);
        assert_eq!(ledger.not_confirmed(), vec![1, 10]);
        // A confirmed entry that is delivered again leaves the kept ones: the listing says
        // it is not confirmed.
        assert!(ledger.known(2, "r2").is_some());
        assert_eq!(ledger.listing(LISTING_MAX_CHARS), listing("1-2,10", ""));
        assert_eq!((ledger.in_flight(), ledger.restored()), (2, 1));
    }

    #[test]
    fn a_listing_over_its_limit_keeps_no_confirmed_entry() {
        let mut ledger = Ledger::new([1, 3, 5, 7], [20, 22], 10, Listing::default());
        // The unconfirmed ones alone take 7 characters.
        assert!(!ledger.fits([], 6));
        assert_eq!(ledger.listing(6), listing("1,3,5,7", ""));
        assert_eq!(ledger.seqs().collect::<Vec<_>>(), vec![1, 3, 5, 7]);
        // Kept at most kept_max from the start.
        let few = Ledger::new([], [1, 5, 9, 13], 2, Listing::default());
        assert_eq!(few.seqs().collect::<Vec<_>>(), vec![9, 13]);
    }
}
